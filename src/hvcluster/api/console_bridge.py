"""Bytes between a console's websocket and where the console is: the VM's unix socket on this
agent (:class:`UnixBackend`), or the owner agent's own console websocket (:class:`PeerBackend`).

The serial console of a guest is a byte stream the guest writes at its own pace: if nobody
took what it wrote, QEMU's serial port would wait, and the guest with it (its shell, its
kernel's console output). So a serial console's output is always read at once from the
socket, and when the websocket's client takes it more slowly than the guest writes, the
oldest output beyond :data:`SERIAL_BACKLOG` bytes is dropped, as a terminal too slow for its
line would lose it (the guest's serial.log keeps everything). A VNC console is not dropped
from (a byte lost would break the RFB protocol): QEMU's VNC server paces its own updates to
a slow client without stopping the guest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from hvcluster.models.errors import Conflict, Forbidden, HvcError, NotFound, Unauthenticated
from hvcluster.tasks import cancel_all

CHUNK = 64 * 1024
SERIAL_BACKLOG = 1024 * 1024  # bytes of serial output held for a slow client, at most
MAX_MESSAGE = 1024 * 1024  # the largest websocket message taken from a peer
CONNECT_TIMEOUT_S = 5.0
FORWARDED = "x-hvc-console-forwarded"  # set by an agent asking the owner: no further hop


class Backend(Protocol):
    """Where a console's bytes go and come from."""

    async def read(self) -> bytes:
        """The next bytes; b"" once the console ended."""
        ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


class UnixBackend:
    """A VM's console socket on this host. With ``drop_beyond``, its output is read at once
    and the oldest is dropped beyond that many bytes not yet taken (see the module)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, drop_beyond: int | None
    ) -> None:
        self.reader, self.writer = reader, writer
        self.on_close: Callable[[], None] | None = None  # called once it is closed
        self.dropped = 0
        self._held: deque[bytes] = deque()
        self._size = 0
        self._ended = False
        self._ready = asyncio.Event()
        self._drainer = (
            asyncio.create_task(self._drain(drop_beyond)) if drop_beyond is not None else None
        )

    @classmethod
    async def open(cls, path: Path, drop_beyond: int | None) -> UnixBackend:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reader, writer = await asyncio.open_unix_connection(path, limit=CHUNK)
        except (OSError, TimeoutError) as e:
            raise Conflict(f"cannot connect to the console at {path}: {e}") from e
        return cls(reader, writer, drop_beyond)

    async def _drain(self, limit: int) -> None:
        try:
            while chunk := await self.reader.read(CHUNK):
                self._held.append(chunk)
                self._size += len(chunk)
                while self._size > limit and len(self._held) > 1:
                    old = self._held.popleft()
                    self._size -= len(old)
                    self.dropped += len(old)
                self._ready.set()
        except OSError:
            pass
        finally:
            self._ended = True
            self._ready.set()

    async def read(self) -> bytes:
        if self._drainer is None:
            try:
                return await self.reader.read(CHUNK)
            except OSError:
                return b""
        while not self._held:
            if self._ended:
                return b""
            self._ready.clear()
            await self._ready.wait()
        data = b"".join(self._held)
        self._held.clear()
        self._size = 0
        return data

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
        if self.on_close is not None:
            self.on_close()
            self.on_close = None


class PeerBackend:
    """The same console served by the VM's owner agent, over its websocket."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    @classmethod
    async def open(
        cls, url: str, credential: str, tls: ssl.SSLContext | None, node: str
    ) -> PeerBackend:
        headers = {"Authorization": f"Bearer {credential}", FORWARDED: "1"}
        try:
            connection = await connect(
                url,
                additional_headers=headers,
                ssl=tls,
                proxy=None,  # agents reach each other directly, never through a proxy
                open_timeout=CONNECT_TIMEOUT_S,
                max_size=MAX_MESSAGE,
            )
        except InvalidStatus as e:
            raise refusal(e.response.status_code, bytes(e.response.body), node) from e
        except (OSError, TimeoutError, WebSocketException) as e:
            raise Conflict(f"cannot reach the console on {node}, the VM's owner: {e}") from e
        return cls(connection)

    async def read(self) -> bytes:
        try:
            message = await self.connection.recv()
        except ConnectionClosed:
            return b""
        return message.encode() if isinstance(message, str) else message

    async def write(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.connection.send(data)

    async def close(self) -> None:
        await self.connection.close()

    @property
    def close_code(self) -> int | None:
        return self.connection.close_code

    @property
    def close_reason(self) -> str:
        return self.connection.close_reason or ""


def refusal(status: int, body: bytes | None, node: str) -> HvcError:
    """The owner's refusal of a forwarded console, as the error it was there."""
    try:
        message = str(json.loads(body or b"{}").get("error", ""))
    except (ValueError, AttributeError):
        message = ""
    message = message or f"{node} refused the console with HTTP {status}"
    kinds: dict[int, type[HvcError]] = {
        401: Unauthenticated,
        403: Forbidden,
        404: NotFound,
    }
    return kinds.get(status, Conflict)(message)


async def pump(websocket: WebSocket, backend: Backend) -> bool:
    """Carry bytes both ways until one side ends; True if the client ended it (it left),
    False if the console did."""
    to_client = asyncio.create_task(_to_client(websocket, backend))
    from_client = asyncio.create_task(_from_client(websocket, backend))
    try:
        done, _ = await asyncio.wait({to_client, from_client}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # (also when this is cancelled: neither side is left running, and the
        # cancellation is not swallowed while waiting for them: see hvcluster.tasks)
        await cancel_all([to_client, from_client])
    return any(task.result() for task in done)


async def _to_client(websocket: WebSocket, backend: Backend) -> bool:
    """Until the console ends (False) or the client is gone (True)."""
    while data := await backend.read():
        try:
            await websocket.send_bytes(data)
        except (WebSocketDisconnect, RuntimeError, OSError):
            return True
    return False


async def _from_client(websocket: WebSocket, backend: Backend) -> bool:
    """Until the client leaves (True) or the console no longer takes input (False)."""
    while True:
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return True
        if message["type"] == "websocket.disconnect":
            return True
        data = message.get("bytes")
        if data is None:
            data = str(message.get("text") or "").encode()
        if data:
            try:
                await backend.write(data)
            except OSError:
                return False
