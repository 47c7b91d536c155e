"""A TCP proxy on loopback whose connections a test can cut: a real broken connection."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target``; :meth:`cut` drops every open connection.
    ``delay_s``: what the target sends waits that long (a slow host: its TLS handshake too).
    While ``hold`` is set, connections are accepted but never forwarded (as a SYN lost in a
    cut link): clear it and new ones go through again, the held ones stay stuck."""

    def __init__(self, target: str, delay_s: float = 0.0) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.delay_s = delay_s
        self.hold = False

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.hold:
            self._writers.add(writer)  # never answered; closed by cut()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        for src, dst, delay in ((reader, up_writer, 0.0), (up_reader, writer, self.delay_s)):
            task = asyncio.create_task(self._pipe(src, dst, delay))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: float
    ) -> None:
        """Copy until EOF, then close ``dst``. With a ``delay`` each piece is sent that long
        after it came, while the next ones are read: a late link, not a slow one (waiting
        for each piece before reading the next held a reply behind the one before it, up
        to twice the delay)."""
        loop = asyncio.get_running_loop()
        late: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._send_late(late, dst))
        self._tasks.add(sender)
        sender.add_done_callback(self._tasks.discard)
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await src.read(65536):
                late.put_nowait((loop.time() + delay, data))
        late.put_nowait((loop.time() + delay, b""))

    async def _send_late(
        self, late: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            while True:
                due, data = await late.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    break
                dst.write(data)
                await dst.drain()
        dst.close()
        self._writers.discard(dst)

    async def cut(self) -> None:
        """Reset every connection open now (new ones are still accepted)."""
        for w in list(self._writers):
            transport = w.transport
            transport.abort()
        self._writers.clear()
        await asyncio.sleep(0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
