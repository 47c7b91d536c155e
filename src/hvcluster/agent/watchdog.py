"""The node watchdog: ``hvc watchdog``. A tiny process per node that kills every VM of the
node when the agent stops feeding it.

Why a separate process: the agent itself may be the thing that died or froze. The agent feeds
the watchdog only while its etcd keepalives are confirmed, with a *deadline* on the shared
monotonic clock (the time the last confirmed keepalive was sent + ``fence_after``). Once the
deadline passes unfed, the watchdog SIGKILLs every VM process listed in
``<run_dir>/vms/*/pid`` and keeps doing so until it is fed again.

No etcd, no asyncio, no threads: a datagram socket, ``select`` and ``kill``. Optionally it also
feeds the hardware watchdog (``/dev/watchdog``) so that a hung kernel reboots the host; that is
off by default and never used in tests.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hvcluster.drivers.runtime import vm_pid

SOCKET_NAME = "watchdog.sock"
LOG_NAME = "watchdog.log"


def vm_pids(run_dir: Path) -> list[tuple[str, int]]:
    """Every (vm, pid) recorded under ``<run_dir>/vms/*/pid`` that still runs, and is the
    process recorded there (its start time matches ``pid.start``: never a recycled pid)."""
    found = []
    for directory in sorted((run_dir / "vms").glob("*")):
        pid = vm_pid(directory)
        if pid is not None and pid > 1:
            found.append((directory.name, pid))
    return found


@dataclass
class Watchdog:
    run_dir: Path
    fence_after: float
    hardware: str | None = None  # e.g. "/dev/watchdog"; None: off

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.fence_after
        self.fenced = False
        self._hw: int | None = None

    def log(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} watchdog: {message}\n"
        with contextlib.suppress(OSError), open(self.run_dir / LOG_NAME, "a") as f:
            f.write(line)
        sys.stderr.write(line)

    def feed(self, deadline: float) -> None:
        """Accept a new deadline (monotonic seconds). A deadline never moves backwards."""
        if deadline > self.deadline:
            self.deadline = deadline
        if self.fenced and time.monotonic() < self.deadline:
            self.fenced = False
            self.log("fed again; VMs may run")
        if self._hw is not None:
            with contextlib.suppress(OSError):
                os.write(self._hw, b"1")

    def check(self) -> list[tuple[str, int]]:
        """Kill every VM if the deadline has passed; return what was killed."""
        if time.monotonic() < self.deadline:
            return []
        killed = []
        for vm, pid in vm_pids(self.run_dir):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append((vm, pid))
        if not self.fenced or killed:
            late = time.monotonic() - self.deadline
            names = ", ".join(f"{vm} (pid {pid})" for vm, pid in killed) or "no VMs"
            self.log(f"not fed for {self.fence_after:.1f}s (+{late:.2f}s): killed {names}")
        self.fenced = True
        return killed

    def open_hardware(self) -> None:
        if self.hardware:
            self._hw = os.open(self.hardware, os.O_WRONLY)

    def close_hardware(self) -> None:
        if self._hw is not None:
            with contextlib.suppress(OSError):
                os.write(self._hw, b"V")  # magic close: disarm on a clean exit
                os.close(self._hw)
            self._hw = None

    def serve(self, stop_after: float | None = None) -> None:
        """Run until SIGTERM/SIGINT. Messages are ``feed <monotonic deadline>``."""
        path = self.run_dir / SOCKET_NAME
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        running = True

        def _stop(signum: int, frame: object) -> None:
            nonlocal running
            running = False

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        self.open_hardware()
        self.log(f"watching {self.run_dir} (fence_after {self.fence_after}s)")
        started = time.monotonic()
        try:
            while running:
                if stop_after is not None and time.monotonic() - started > stop_after:
                    break
                wait = max(0.0, min(0.05, self.deadline - time.monotonic()))
                readable, _, _ = select.select([sock], [], [], wait if not self.fenced else 0.05)
                if readable:
                    self._handle(sock.recv(256))
                self.check()
        finally:
            self.close_hardware()
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _handle(self, message: bytes) -> None:
        parts = message.decode(errors="replace").split()
        if len(parts) == 2 and parts[0] == "feed":
            try:
                self.feed(float(parts[1]))
            except ValueError:
                self.log(f"ignored malformed message {message!r}")
        else:
            self.log(f"ignored unknown message {message!r}")


class WatchdogFeeder:
    """The agent's side: send a deadline; never blocks, never raises."""

    def __init__(self, run_dir: Path) -> None:
        self.path = str(run_dir / SOCKET_NAME)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)

    def feed(self, deadline: float) -> bool:
        try:
            self.sock.sendto(f"feed {deadline:.6f}".encode(), self.path)
        except OSError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m hvcluster.agent.watchdog --run-dir DIR --fence-after S``: no Typer, no
    asyncio, so it starts fast and depends on as little as possible."""
    import argparse

    parser = argparse.ArgumentParser(prog="hvc watchdog", description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--fence-after", type=float, default=3.0)
    parser.add_argument("--hardware", default=None, help="e.g. /dev/watchdog (off by default)")
    args = parser.parse_args(argv)
    if args.fence_after <= 0:
        parser.error("--fence-after must be positive")
    args.run_dir.mkdir(parents=True, exist_ok=True)
    Watchdog(args.run_dir, args.fence_after, args.hardware).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
