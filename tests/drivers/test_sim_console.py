"""The sim driver's consoles are real unix sockets behaving as a guest's would: a serial line
shell, a VNC greeting; they end when the VM stops or leaves."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hvcluster.drivers.errors import NotRunning
from hvcluster.drivers.sim import SimDriver
from hvcluster.models.console import ConsoleKind
from hvcluster.models.vm import VMSpec

pytestmark = pytest.mark.timeout(30)


async def read_until(reader: asyncio.StreamReader, marker: bytes) -> bytes:
    seen = b""
    async with asyncio.timeout(5):
        while marker not in seen:
            chunk = await reader.read(1024)
            assert chunk, f"the console ended before {marker!r}: {seen!r}"
            seen += chunk
    return seen


@pytest.mark.parametrize("with_run_dir", [True, False])
async def test_serial_answers_lines_and_ends_with_the_vm(
    tmp_path: Path, with_run_dir: bool
) -> None:
    driver = SimDriver(run_dir=tmp_path if with_run_dir else None)
    with pytest.raises(NotRunning):
        await driver.console("web", ConsoleKind.SERIAL)
    await driver.start(VMSpec(name="web", memory_mib=128), 1)
    try:
        path = await driver.console("web", ConsoleKind.SERIAL)
        if with_run_dir:
            assert path == tmp_path / "vms" / "web" / "serial.sock"
        assert await driver.console("web", ConsoleKind.SERIAL) == path  # the same server
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"echo hello  there\r\n")
        said = await read_until(reader, b"web:/# ")
        assert said == b"echo hello  there\r\nhello there\r\nweb:/# "
        writer.write(b"hostnamx\x7fe\rnope\n")
        said = await read_until(reader, b"not found\r\nweb:/# ")
        assert b"\r\nweb\r\nweb:/# " in said and b"sh: nope: not found" in said

        await driver.kill("web")
        async with asyncio.timeout(5):
            assert await reader.read() == b"", "the console ends with the VM"
        writer.close()
        with pytest.raises(NotRunning):
            await driver.console("web", ConsoleKind.SERIAL)
    finally:
        await driver.close()


async def test_vnc_greets_as_rfb(tmp_path: Path) -> None:
    driver = SimDriver(run_dir=tmp_path)
    await driver.start(VMSpec(name="web", memory_mib=128), 1)
    try:
        reader, writer = await asyncio.open_unix_connection(
            await driver.console("web", ConsoleKind.VNC)
        )
        async with asyncio.timeout(5):
            assert await reader.readexactly(12) == b"RFB 003.008\n"
        writer.close()
    finally:
        await driver.close()
