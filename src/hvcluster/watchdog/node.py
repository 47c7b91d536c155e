"""The node watchdog: ``hvc watchdog``. A tiny process per node that kills every VM of the
node when the agent stops feeding it.

Why a separate process: the agent itself may be the thing that died or froze. The agent feeds
the watchdog only while its etcd keepalives are confirmed, with a *deadline* on the shared
monotonic clock (the time the last confirmed keepalive was sent + ``fence_after``). Once the
deadline passes unfed, the watchdog SIGKILLs every VM process listed in
``<run_dir>/vms/*/pid`` and keeps doing so until it is fed again.

The watchdog answers every feed (``ack <deadline it holds>``) to the feeder's address: an
agent whose feeds go unanswered (no watchdog running, one watching another run dir, a hung
one) knows nobody would kill its VMs if it were cut off, and starts none
(:class:`WatchdogFeeder.acknowledgement`).

No etcd, no asyncio, no threads: a datagram socket, ``select`` and ``kill``. Optionally it also
feeds the hardware watchdog (``/dev/watchdog``) so that a hung kernel reboots the host; that is
off by default and never used in tests.

Stopping it (SIGTERM) while VMs run fences them at the deadline it holds before it exits
(:meth:`Watchdog.stopping`): a stopped watchdog must not leave VMs running unguarded.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
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
        """Run until SIGTERM/SIGINT (then :meth:`stopping`). Messages are ``feed <monotonic
        deadline>``."""
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
                    message, sender = sock.recvfrom(256)
                    self._answer(sock, sender, self._handle(message))
                self.check()
            if not running:  # a signal, not the tests' stop_after
                self.stopping()
        finally:
            self.close_hardware()
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def stopping(self, poll: float = 0.05) -> list[tuple[str, int]]:
        """Asked to stop (SIGTERM: the host shuts down, or an admin stops the service) while
        VMs may still run here. A watchdog that just exits guards nothing: once the node's
        lease expires the cluster starts these VMs elsewhere while they still run here (the
        agent's unit leaves QEMU running when the agent stops). So a stopping watchdog takes
        no more feeds and kills the VMs still here at the deadline it already holds, exactly
        as if the agent had stopped feeding, then exits. With no VM running it exits at once,
        so a drained host stops without delay. Returns what was killed."""
        if not vm_pids(self.run_dir):
            return []
        self.log(
            "asked to stop while VMs run: taking no more feeds, their fence comes "
            f"at the deadline held ({max(0.0, self.deadline - time.monotonic()):.2f}s)"
        )
        while vm_pids(self.run_dir) and time.monotonic() < self.deadline:
            time.sleep(min(poll, max(0.0, self.deadline - time.monotonic())))
        return self.check()

    def _handle(self, message: bytes) -> bool:
        """Take one message; True if it was a feed (to be acknowledged)."""
        parts = message.decode(errors="replace").split()
        if len(parts) == 2 and parts[0] == "feed":
            try:
                self.feed(float(parts[1]))
                return True
            except ValueError:
                self.log(f"ignored malformed message {message!r}")
        else:
            self.log(f"ignored unknown message {message!r}")
        return False

    def _answer(self, sock: socket.socket, sender: str | bytes, fed: bool) -> None:
        """Acknowledge a feed to its sender (a feeder with an address): never blocks, and a
        feeder gone or not reading costs nothing."""
        if not fed or not sender:
            return
        with contextlib.suppress(OSError):
            sock.sendto(f"ack {self.deadline:.6f}".encode(), socket.MSG_DONTWAIT, sender)


@dataclass(frozen=True)
class Acknowledgement:
    """Whether the watchdog answers feeding. ``ok`` None: nothing fed yet, nothing to judge."""

    ok: bool | None
    problem: str = ""  # why not, when not ok
    silent_since: float | None = None  # monotonic: the first feed left unanswered


class WatchdogFeeder:
    """The agent's side: send a deadline; never blocks, never raises. Its socket has an
    (abstract, kernel-chosen) address so the watchdog can answer; answers are read when
    :meth:`acknowledgement` is asked, from any thread."""

    def __init__(self, run_dir: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = str(run_dir / SOCKET_NAME)
        self.clock = clock
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        with contextlib.suppress(OSError):
            self.sock.bind("")  # Linux autobind: an abstract address to be answered at
        self._lock = threading.Lock()
        self._fed = False
        self._answered = False  # any answer since the first feed
        self._send_error = ""
        self._unanswered_since: float | None = None  # the oldest feed without an answer

    def feed(self, deadline: float) -> bool:
        try:
            self.sock.sendto(f"feed {deadline:.6f}".encode(), self.path)
            sent, error = True, ""
        except OSError as e:
            sent, error = False, f"no watchdog listens at {self.path} ({e.strerror or e})"
        with self._lock:
            self._fed = True
            self._send_error = error
            if self._unanswered_since is None:
                self._unanswered_since = self.clock()
        return sent

    def _read_answers(self) -> None:
        while True:
            try:
                answer = self.sock.recv(64)
            except OSError:  # nothing more waiting (EAGAIN), or the socket is closed
                return
            if answer.startswith(b"ack "):
                self._answered = True
                self._unanswered_since = None

    def acknowledgement(self, grace: float) -> Acknowledgement:
        """Not ok once a feed went unanswered (or could not even be sent) for more than
        ``grace`` seconds: a watchdog answers at once, so it is gone, hung, or watching
        another run dir. Not judged yet (None) before its first answer, within ``grace``
        (an agent and its watchdog may start together)."""
        with self._lock:
            self._read_answers()
            if not self._fed:
                return Acknowledgement(None)
            silent = self._unanswered_since
            if silent is not None and self.clock() - silent > grace:
                problem = self._send_error or f"the watchdog at {self.path} does not answer"
                return Acknowledgement(False, problem, silent)
            return Acknowledgement(True if self._answered else None)

    def close(self) -> None:
        self.sock.close()


class MemoryWatchdog(WatchdogFeeder):
    """The in-process twin for simulations (no process to kill sim VMs): it keeps the
    deadlines it is fed and answers at once, unless ``running`` is False (then feeding
    fails as it does with no watchdog listening)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(Path("/nonexistent-hvc-memory-watchdog"), clock)
        self.running = True
        self.deadlines: list[float] = []

    def feed(self, deadline: float) -> bool:
        if not self.running:
            return super().feed(deadline)  # no socket there: fails, and says so
        self.deadlines.append(deadline)
        with self._lock:
            self._fed, self._answered, self._send_error = True, True, ""
            self._unanswered_since = None
        return True


def main(argv: list[str] | None = None) -> int:
    """``python -m hvcluster.watchdog --run-dir DIR --fence-after S``: no Typer, no
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
