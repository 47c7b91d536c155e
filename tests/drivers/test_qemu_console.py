"""A real guest's consoles under the qemu driver: the serial console answers a typed line
(the test guest runs a shell there) while serial.log keeps everything, and the graphical
console is QEMU's VNC server on a unix socket of the VM, with no TCP port open."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest

from hvcluster.drivers.errors import NotRunning
from hvcluster.drivers.qemu.driver import QemuDriver
from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.drivers.runtime import vm_dir
from hvcluster.guestimage.image import GuestImage
from hvcluster.guestimage.testguest import booted, guest_spec, heartbeats
from hvcluster.models.console import ConsoleKind
from tests.drivers.listening import tcp_listening_ports
from tests.waiting import wait_for

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(150)]

BOOT_S = 60.0


async def read_until(reader: asyncio.StreamReader, marker: bytes, timeout: float) -> bytes:
    seen = b""
    async with asyncio.timeout(timeout):
        while marker not in seen:
            chunk = await reader.read(4096)
            assert chunk, f"the console ended before {marker!r}; it said {seen[-400:]!r}"
            seen += chunk
    return seen  # (what came before a timeout is lost to the caller: it types again)


async def test_serial_console_answers_and_vnc_is_a_unix_socket(
    run_dirs: Callable[[str], Path], qemu_settings: QemuSettings, guest_image: GuestImage
) -> None:
    node = run_dirs("n1")
    driver = QemuDriver(node, qemu_settings)
    with pytest.raises(NotRunning):
        await driver.console("g1", ConsoleKind.SERIAL)
    info = await driver.start(guest_spec("g1", guest_image), epoch=1)
    try:
        log = vm_dir(node, "g1") / "serial.log"
        await wait_for(lambda: booted(log), BOOT_S, "the guest to boot")

        path = await driver.console("g1", ConsoleKind.SERIAL)
        assert path == vm_dir(node, "g1") / "serial.sock"
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            # The typed line holds $((40+2)), the answer 42: only the guest's shell makes it.
            # What is typed before the guest's shell opened the serial port is lost (the UART
            # drops it at startup): typed again until answered.
            said = b""
            for _ in range(12):
                writer.write(b"echo HVC-ANSWER-$((40+2))\r")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    said += await read_until(reader, b"HVC-ANSWER-42", 5)
                    break
            assert b"HVC-ANSWER-42" in said
            assert b"$((40+2))" in said  # the terminal's echo of what was typed
            # serial.log keeps what the guest writes while a console is connected, too.
            beats = len(heartbeats(log))
            await wait_for(lambda: len(heartbeats(log)) > beats, 15, "a heartbeat in the log")
            assert "HVC-ANSWER-42" in log.read_text(errors="replace")
        finally:
            writer.close()

        vnc = await driver.console("g1", ConsoleKind.VNC)
        reader, writer = await asyncio.open_unix_connection(vnc)
        try:
            async with asyncio.timeout(10):
                assert await reader.readexactly(12) == b"RFB 003.008\n"
        finally:
            writer.close()
        assert info.pid is not None
        assert tcp_listening_ports(info.pid) == [], "QEMU must open no TCP port (VNC, ...)"
    finally:
        await driver.kill("g1")
        await driver.close()
