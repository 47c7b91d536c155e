"""Helpers for tests that run a whole agent daemon in-process: a real node watchdog process,
stand-in VM processes it would kill, and waiting on conditions."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hvcluster.drivers.base import HostFacts
from hvcluster.drivers.sim import SimDriver
from hvcluster.watchdog.node import LOG_NAME, SOCKET_NAME
from tests.waiting import wait_for, wait_for_sync

__all__ = ["wait_for"]  # the agent tests wait as the sim tests do


@contextmanager
def node_watchdog(run_dir: Path, fence_after: float) -> Iterator[subprocess.Popen[bytes]]:
    """``hvc watchdog`` for ``run_dir``, as a real process; killed after."""
    run_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hvcluster.watchdog", "--run-dir", str(run_dir),
         "--fence-after", str(fence_after)],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def listening() -> bool:
            assert proc.poll() is None, "the watchdog exited"
            return (run_dir / SOCKET_NAME).exists()

        wait_for_sync(listening, 20, "the watchdog to listen", every=0.02)
        yield proc
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def vm_process(run_dir: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
    """A process listed as VM ``name`` of the node (``vms/<name>/pid``): what the
    watchdog kills when it is not fed."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    (run_dir / "vms" / name).mkdir(parents=True, exist_ok=True)
    (run_dir / "vms" / name / "pid").write_text(f"{proc.pid}\n")
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def watchdog_log(run_dir: Path) -> str:
    path = run_dir / LOG_NAME
    return path.read_text() if path.exists() else ""


class SlowProbeDriver(SimDriver):
    """A sim driver whose host inventory (QEMU's accelerator probe) takes ``probe_s``: a new
    QEMU version can take 20 s to answer."""

    def __init__(self, probe_s: float) -> None:
        super().__init__()
        self.probe_s = probe_s
        self.probed = False

    async def inventory(self) -> HostFacts:
        await asyncio.sleep(self.probe_s)
        self.probed = True
        return await super().inventory()
