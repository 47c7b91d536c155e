"""Starting a detached QEMU and watching its process: no QMP here."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

from hvcluster.drivers.errors import HypervisorMissing, QemuFailed
from hvcluster.drivers.runtime import pid_alive, read_int


def log_tail(path: Path, limit: int = 600) -> str:
    """The end of QEMU's own log: what it said before it refused or died."""
    try:
        text = path.read_text(errors="replace").strip()
    except FileNotFoundError:
        return ""
    return text[-limit:]


async def launch(argv: list[str], vm_dir: Path, timeout: float) -> int:
    """Run QEMU with ``-daemonize``: the first process exits once QEMU is ready (pidfile
    written, QMP listening) and the VM lives on in its own session, reparented away from us.
    Returns the daemon's pid."""
    log_path = vm_dir / "qemu.log"
    with log_path.open("ab") as log:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError) as e:
            raise HypervisorMissing(f"QEMU binary {argv[0]!r} cannot be run: {e}") from e
    try:
        async with asyncio.timeout(timeout):
            rc = await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pid = read_int(vm_dir / "pid")
        if pid is not None:
            await kill_and_wait(pid)
        raise QemuFailed(
            f"vm {vm_dir.name}: QEMU did not get ready in {timeout}s: {log_tail(log_path)}"
        ) from None
    if rc != 0:
        raise QemuFailed(
            f"vm {vm_dir.name}: QEMU exited with status {rc}: {log_tail(log_path) or 'no message'}"
        )
    pid = read_int(vm_dir / "pid")
    if pid is None or not pid_alive(pid):
        raise QemuFailed(
            f"vm {vm_dir.name}: QEMU reported ready but is not running: {log_tail(log_path)}"
        )
    return pid


async def wait_gone(pid: int, start: int | None, timeout: float) -> bool:
    """Wait until the process is gone (a zombie counts as gone); True if it went in time."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid, start):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def kill_and_wait(pid: int, start: int | None = None, timeout: float = 10.0) -> None:
    if pid_alive(pid, start):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if not await wait_gone(pid, start, timeout):
        raise QemuFailed(f"process {pid} survived SIGKILL for {timeout}s")


async def enslave_tap(tap: str, bridge: str) -> None:
    """Put QEMU's tap on its bridge and bring it up (QEMU creates the tap, ``script=no``)."""
    for argv in (
        ["ip", "link", "set", "dev", tap, "master", bridge],
        ["ip", "link", "set", "dev", tap, "up"],
    ):
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
        except OSError as e:
            raise QemuFailed(f"cannot run ip to attach tap {tap} to {bridge}: {e}") from e
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise QemuFailed(f"{' '.join(argv)}: {err.decode(errors='replace').strip()}")
