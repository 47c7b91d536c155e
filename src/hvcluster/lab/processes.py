"""Starting and stopping the lab's processes: detached, logged, never left behind by accident."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


def spawn(argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start ``argv`` in its own session (it outlives the ``hvc lab`` command that started it),
    stdout and stderr appended to ``log``. Returns the pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            close_fds=True,
        )
    return proc.pid


def alive(pid: int) -> bool:
    """True if ``pid`` is a running (not zombie) process."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def stopped(pid: int) -> bool:
    """True if ``pid`` is stopped by a signal (SIGSTOP)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False


def signal_pid(pid: int, sig: signal.Signals) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def reap(pid: int) -> None:
    """Collect ``pid`` if it is our child (it is when this process started it)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def terminate(pids: Sequence[int], grace: float = 5.0) -> None:
    """SIGTERM (and SIGCONT, in case they are stopped), then SIGKILL what is left after
    ``grace`` seconds."""
    live = [p for p in pids if alive(p)]
    for p in live:
        signal_pid(p, signal.SIGCONT)
        signal_pid(p, signal.SIGTERM)
    end = time.monotonic() + grace
    while live and time.monotonic() < end:
        for p in live:
            reap(p)
        live = [p for p in live if alive(p)]
        time.sleep(0.05)
    for p in live:
        signal_pid(p, signal.SIGKILL)
        reap(p)


def kill_group(pid: int) -> bool:
    """SIGKILL the process group ``pid`` leads (a process :func:`spawn` started leads its own),
    so that the children it ran without a session of their own (``qemu-img``, ``ip``) go with
    it; only ``pid`` when it leads no group (then its pid may be another's by now)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
            return True
    return signal_pid(pid, signal.SIGKILL)


def kill(pids: Sequence[int], wait: float = 5.0, groups: bool = False) -> None:
    """SIGKILL ``pids`` (with ``groups``: the process groups they lead, :func:`kill_group`)
    and wait (up to ``wait`` seconds) until they are gone."""
    for p in pids:
        if p > 0 and groups:
            kill_group(p)
        else:
            signal_pid(p, signal.SIGKILL)
    end = time.monotonic() + wait
    live = list(pids)
    while live and time.monotonic() < end:
        for p in live:
            reap(p)
        live = [p for p in live if alive(p)]
        if live:
            time.sleep(0.01)
