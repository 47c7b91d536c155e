"""How a simulated migration crosses from one sim driver to another, even in another process:
a TCP connection that carries no memory, only the handshake and the outcome. If the target
goes away mid-migration the source sees it, as with QEMU.

Within one process (a deterministic simulation, ``hvc sim``) the connection can be in memory
instead: the same messages, delivered on the event loop with no socket, so when they arrive
depends on the tasks' order alone and not on the kernel. Its addresses have the one form a
migration record allows (``tcp:HOST:PORT``), the port a number of this process's registry of
listeners, not a socket's; only a source in memory mode looks them up there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any, Protocol

from hvcluster.drivers.errors import MigrationFailed

Outcome = Callable[[bool, str, dict[str, Any]], None]  # (completed, reason, what the source sent)
Lost = Callable[[str], None]  # a guest switched over by postcopy lost its source: why


def parse_address(address: str) -> tuple[str, int]:
    if not address.startswith("tcp:"):
        raise MigrationFailed(f"unsupported migration address {address!r} (expected tcp:HOST:PORT)")
    host, _, port = address[4:].rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError as e:
        raise MigrationFailed(f"bad migration address {address!r}") from e


def format_address(host: str, port: int) -> str:
    return f"tcp:[{host}]:{port}" if ":" in host else f"tcp:{host}:{port}"


class Writer(Protocol):
    """What is used of an :class:`asyncio.StreamWriter` (and :class:`MemoryWriter` has)."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class MemoryWriter:
    """One direction of an in-memory connection: what is written is fed to the peer's
    reader; closing is its end of file."""

    def __init__(self, peer: asyncio.StreamReader) -> None:
        self._peer = peer
        self._closed = False

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionResetError("the in-memory connection is closed")
        self._peer.feed_data(data)

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._peer.feed_eof()

    async def wait_closed(self) -> None:
        return None


_LISTENING: dict[str, Incoming] = {}  # in-memory address -> the listener there (this process)


async def _send(writer: Writer, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message).encode() + b"\n")
    await writer.drain()


async def _receive(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    line = await reader.readline()
    if not line:
        return None
    data = json.loads(line)
    return data if isinstance(data, dict) else None


class Incoming:
    """The target's listener for one VM: accepts one source, reports the outcome once."""

    def __init__(
        self,
        vm: str,
        on_outcome: Outcome,
        model: str | None = None,
        size: dict[str, int] | None = None,
        on_lost: Lost | None = None,
    ) -> None:
        """``on_outcome`` is called once: completed (the state is all here, or postcopy began:
        the guest may run here, fetching the rest), or failed. After a postcopy start, a source
        that aborts or hangs up is ``on_lost``: the guest here lacks pages it never got."""
        self.vm = vm
        self._on_outcome = on_outcome
        self._on_lost = on_lost
        self._model = model  # the CPU model the guest here has: the state must be of it
        self._size = size or {}  # memory_mib, vcpus of the guest here: the state's must match
        self._server: asyncio.Server | None = None
        self._address = ""  # in memory: where it listens
        self._task: asyncio.Task[None] | None = None  # in memory: serving the source
        self._decided = False

    async def listen(self, host: str) -> str:
        try:
            self._server = await asyncio.start_server(self._serve, host, 0)
        except OSError as e:
            raise MigrationFailed(f"cannot listen for vm {self.vm} on {host}: {e}") from e
        port = self._server.sockets[0].getsockname()[1]
        return format_address(host, int(port))

    def listen_in_memory(self, host: str) -> str:
        """Listen in memory (see the module docstring): the lowest port number free in this
        process's registry."""
        port = 1
        while format_address(host, port) in _LISTENING:
            port += 1
        self._address = format_address(host, port)
        _LISTENING[self._address] = self
        return self._address

    def accept_in_memory(self) -> tuple[asyncio.StreamReader, Writer]:
        """A source connects (one only): its reader and writer; this side is served."""
        _LISTENING.pop(self._address, None)
        mine, theirs = asyncio.StreamReader(), asyncio.StreamReader()
        task = asyncio.get_running_loop().create_task(self._serve(mine, MemoryWriter(theirs)))
        self._task = task
        return theirs, MemoryWriter(mine)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._address and _LISTENING.get(self._address) is self:
            del _LISTENING[self._address]

    def _decide(self, completed: bool, reason: str, meta: dict[str, Any] | None = None) -> None:
        if not self._decided:
            self._decided = True
            self._on_outcome(completed, reason, meta or {})

    async def _serve(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        if self._server is not None:
            self._server.close()  # one source only
        try:
            hello = await _receive(reader)
            if not hello or hello.get("vm") != self.vm:
                await _send(writer, {"ok": False, "error": f"this listener waits for {self.vm}"})
                return
            sent = dict(hello.get("meta", {})).get("cpu_model", self._model)
            if self._model is not None and sent != self._model:
                why = f"CPU state of model {sent or 'default'} into a guest of {self._model}"
                await _send(writer, {"ok": False, "error": why})
                self._decide(False, f"incoming migration refused: {why}")
                return
            meta = dict(hello.get("meta", {}))
            other = {k: meta[k] for k, v in self._size.items() if k in meta and meta[k] != v}
            if other:  # as QEMU: a RAM block of another length, a CPU it does not have
                why = f"a guest of {other} into one of {self._size}"
                await _send(writer, {"ok": False, "error": why})
                self._decide(False, f"incoming migration refused: {why}")
                return
            await _send(writer, {"ok": True})
            end = await _receive(reader)
            if end and end.get("op") == "postcopy":
                self._decide(True, "postcopy: the guest runs here", meta)
                end = await _receive(reader)
                if not end or end.get("op") != "done":
                    why = end.get("reason", "aborted") if end else "the source hung up"
                    if self._on_lost is not None:
                        self._on_lost(f"failed in postcopy: {why}")
                    return
            if end and end.get("op") == "done":
                self._decide(True, "incoming migration completed", dict(hello.get("meta", {})))
                await _send(writer, {"ok": True})
            else:
                why = end.get("reason", "aborted") if end else "the source hung up"
                self._decide(False, f"incoming migration failed: {why}")
        except (OSError, ValueError, asyncio.IncompleteReadError) as e:
            self._decide(False, f"incoming migration failed: {e}")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class Outgoing:
    """The source's side of one migration."""

    def __init__(self, vm: str, address: str, memory: bool = False) -> None:
        """``memory``: connect to a listener in memory (see the module docstring)."""
        self.vm = vm
        self.address = address
        self.memory = memory
        self._reader: asyncio.StreamReader | None = None
        self._writer: Writer | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, Writer]:
        if self.memory:
            target = _LISTENING.get(self.address)
            if target is None:
                raise ConnectionRefusedError(f"nothing listens at {self.address}")
            return target.accept_in_memory()
        host, port = parse_address(self.address)
        return await asyncio.open_connection(host, port)

    async def open(self, meta: dict[str, Any]) -> None:
        try:
            self._reader, self._writer = await self._connect()
            await _send(self._writer, {"op": "hello", "vm": self.vm, "meta": meta})
            reply = await _receive(self._reader)
        except (OSError, ValueError) as e:
            raise MigrationFailed(f"vm {self.vm}: cannot reach {self.address}: {e}") from e
        if not reply or not reply.get("ok"):
            why = reply.get("error", "refused") if reply else "no answer"
            raise MigrationFailed(f"vm {self.vm}: target {self.address} refused: {why}")

    async def finish(self) -> None:
        assert self._reader is not None and self._writer is not None
        try:
            await _send(self._writer, {"op": "done"})
            reply = await _receive(self._reader)
        except (OSError, ValueError) as e:
            raise MigrationFailed(f"vm {self.vm}: target {self.address} lost: {e}") from e
        if not reply or not reply.get("ok"):
            raise MigrationFailed(f"vm {self.vm}: target {self.address} did not take the VM")

    async def postcopy(self) -> None:
        """Postcopy begins: the target may run the guest now (the rest follows)."""
        assert self._writer is not None
        try:
            await _send(self._writer, {"op": "postcopy"})
        except OSError as e:
            raise MigrationFailed(f"vm {self.vm}: target {self.address} lost: {e}") from e

    async def abort(self, reason: str) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError):
                await _send(self._writer, {"op": "abort", "reason": reason})

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
