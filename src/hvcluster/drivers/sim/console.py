"""The sim driver's consoles: real unix sockets that behave enough like a guest's to test the
whole path (the API's websocket bridge, following a VM across a migration, ``hvc vm
console``) without QEMU.

* ``serial``: a tiny line shell, as a guest's serial getty would be. What is typed is echoed
  back (a terminal's echo); at the end of a line (CR or LF) it answers and prompts
  ``<vm>:/# ``: ``echo WORDS`` prints the words, ``hostname`` the VM's name, anything else
  ``sh: CMD: not found``; ^C drops the line typed so far.
* ``vnc``: speaks RFB 3.8 as QEMU's VNC server without a password does, up to the server's
  init (a 640x480 screen named after the VM; no pixels ever come), then reads whatever
  comes after.

A server is started the first time its console is asked for, and stops (cutting its clients)
when the VM stops here or leaves: a client then sees the stream end, as with QEMU.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

from hvcluster.drivers.errors import NoConsole
from hvcluster.models.console import ConsoleKind, console_socket_name

RFB_GREETING = b"RFB 003.008\n"
# 32 bits per pixel, depth 24, little-endian, true colour, 8 bits each of red, green, blue.
PIXEL_FORMAT = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
MAX_LINE = 4096


def answer(vm: str, line: str) -> str:
    """What the fake shell prints for one typed line (without the prompt)."""
    words = line.split()
    if not words:
        return ""
    if words[0] == "echo":
        return " ".join(words[1:])
    if words[0] == "hostname":
        return vm
    return f"sh: {words[0]}: not found"


class SimConsoles:
    """The console servers of one sim driver's VMs. ``dir_of(vm)``: the directory a VM's
    sockets go in (its runtime dir), or None to use a temporary one of this driver's."""

    def __init__(self, dir_of: Callable[[str], Path | None]) -> None:
        self._dir_of = dir_of
        self._servers: dict[tuple[str, ConsoleKind], asyncio.Server] = {}
        self._clients: dict[str, set[asyncio.StreamWriter]] = {}
        self._tmp: Path | None = None

    async def serve(self, vm: str, kind: ConsoleKind) -> Path:
        """The socket of ``vm``'s console ``kind``, its server started if it is not yet."""
        directory = self._directory(vm)
        path = directory / console_socket_name(kind)
        if (vm, kind) in self._servers and path.is_socket():
            return path
        self._stop_server(vm, kind)
        directory.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        handler = self._serial if kind is ConsoleKind.SERIAL else self._vnc

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._clients.setdefault(vm, set()).add(writer)
            try:
                await handler(vm, reader, writer)
            except (ConnectionError, OSError):
                pass
            finally:
                self._clients.get(vm, set()).discard(writer)
                writer.close()

        try:
            self._servers[(vm, kind)] = await asyncio.start_unix_server(client, path)
        except OSError as e:
            raise NoConsole(f"vm {vm!r}: cannot serve its {kind.value} console: {e}") from e
        return path

    def drop(self, vm: str) -> None:
        """``vm`` stopped here or left: its consoles end, and their clients are cut."""
        for kind in ConsoleKind:
            self._stop_server(vm, kind)
        for writer in self._clients.pop(vm, set()):
            writer.close()

    def close(self) -> None:
        for vm in {vm for vm, _ in self._servers} | set(self._clients):
            self.drop(vm)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _directory(self, vm: str) -> Path:
        d = self._dir_of(vm)
        if d is not None:
            return d
        if self._tmp is None:  # an in-memory driver: its sockets still need a path
            self._tmp = Path(tempfile.mkdtemp(prefix="hvc-sim-console-"))
        return self._tmp / vm

    def _stop_server(self, vm: str, kind: ConsoleKind) -> None:
        server = self._servers.pop((vm, kind), None)
        if server is not None:
            server.close()

    @staticmethod
    async def _serial(vm: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = bytearray()
        after_cr = False
        while chunk := await reader.read(1024):
            out = bytearray()
            for byte in chunk:
                if byte == 0x0A and after_cr:  # CR LF: one end of line
                    after_cr = False
                    continue
                after_cr = byte == 0x0D
                if byte in (0x0D, 0x0A):
                    said = answer(vm, line.decode(errors="replace"))
                    out += b"\r\n" + (said.encode() + b"\r\n" if said else b"")
                    out += f"{vm}:/# ".encode()
                    line.clear()
                elif byte == 0x03:  # ^C: the line is dropped, as a shell does
                    line.clear()
                    out += b"^C\r\n" + f"{vm}:/# ".encode()
                elif byte in (0x08, 0x7F):  # backspace, delete
                    if line:
                        line.pop()
                        out += b"\x08 \x08"
                elif len(line) < MAX_LINE:  # beyond it, typing is lost as on a full tty
                    line.append(byte)
                    out.append(byte)
            writer.write(bytes(out))
            await writer.drain()

    @staticmethod
    async def _vnc(vm: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """RFB 3.8 up to the server's init, as QEMU's VNC server without a password (security
        type None) and a black 640x480 screen; then it takes and ignores what comes."""
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            writer.write(RFB_GREETING)
            await writer.drain()
            await reader.readexactly(len(RFB_GREETING))  # the client's version
            writer.write(bytes([1, 1]))  # one security type: None
            await reader.readexactly(1)
            writer.write(struct.pack(">I", 0))  # security result: OK
            await reader.readexactly(1)  # client init (shared or not)
            name = vm.encode()
            writer.write(struct.pack(">HH", 640, 480) + PIXEL_FORMAT)
            writer.write(struct.pack(">I", len(name)) + name)
            await writer.drain()
            while await reader.read(4096):
                pass
