"""The runtime layout shared by every driver, and process helpers with no asyncio.

Each VM a driver runs has a directory ``<run_dir>/vms/<name>/`` holding:

- ``pid``: the process that *is* the VM (QEMU, or the sim driver's placeholder);
- ``pid.start``: that process's start time in clock ticks (``/proc/<pid>/stat`` field 22), so a
  recycled pid is never mistaken for the VM;
- ``spec.json``: the spec and epoch the VM was started from;
- ``state.json``: the last state the driver saw, and since when;
- ``serial.sock`` and ``vnc.sock``: its consoles (:mod:`hvcluster.models.console`; the sim
  driver serves a fake serial console and a VNC greeting there);
- ``qmp.sock`` and ``serial.log`` (QEMU only: everything the guest wrote to its serial port);
- ``qmp2.sock`` (QEMU only): a second QMP monitor for onlookers, the agent holding the
  first (:data:`OBSERVE_SOCKET`).

The node watchdog uses :func:`running_pids` / :func:`kill_all` to kill every VM of the node at
once; they are plain synchronous code so the watchdog stays tiny.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

# The second QMP monitor of a QEMU VM (its dir); no longer than serial.sock, so that a VM dir
# whose consoles fit in a socket path (108 bytes) fits it too.
OBSERVE_SOCKET = "qmp2.sock"

VMS_DIR = "vms"


def vms_root(run_dir: Path) -> Path:
    return Path(run_dir) / VMS_DIR


def vm_dir(run_dir: Path, name: str) -> Path:
    return vms_root(run_dir) / name


def process_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of a live process, or None if it is gone or a
    zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    rest = raw[raw.rfind(")") + 2 :].split()
    if rest[0] in ("Z", "X"):
        return None
    return int(rest[19])


def pid_alive(pid: int, start: int | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, when ``start`` is given, is the same process."""
    now = process_start(pid)
    return now is not None and (start is None or now == start)


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def record_identity(directory: Path, pid: int) -> int | None:
    """Write ``pid`` and ``pid.start`` for a process that was just started; returns its start."""
    start = process_start(pid)
    write_atomic(directory / "pid", f"{pid}\n")
    if start is not None:
        write_atomic(directory / "pid.start", f"{start}\n")
    return start


def vm_pid(directory: Path) -> int | None:
    """The pid of the VM whose runtime dir this is, if that process still runs."""
    pid = read_int(directory / "pid")
    if pid is None:
        return None
    return pid if pid_alive(pid, read_int(directory / "pid.start")) else None


def running_pids(run_dir: Path) -> list[int]:
    """Every live VM process of this node, from ``<run_dir>/vms/*/pid``."""
    root = vms_root(run_dir)
    if not root.is_dir():
        return []
    pids = []
    for d in sorted(root.iterdir()):
        pid = vm_pid(d)
        if pid is not None:
            pids.append(pid)
    return pids


def kill_all(run_dir: Path, sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to every live VM process of this node at once; return the pids signalled."""
    done = []
    for pid in running_pids(run_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            done.append(pid)
    return done


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def process_cpu_and_rss(pid: int) -> tuple[float, float, float] | None:
    """``(cpu_seconds, rss_mib, age_seconds)`` of a live process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text().split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(rest[11]) + int(rest[12])) / ticks
    rss = int(statm[1]) * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    age = max(uptime - int(rest[19]) / ticks, 1e-3)
    return cpu, rss, age


def retire(run_dir: Path, name: str, keep: tuple[str, ...] = ()) -> None:
    """Remove a VM's runtime dir, keeping the named files (its last logs) in
    ``<run_dir>/logs/<name>.<file>``."""
    d = vm_dir(run_dir, name)
    if keep:
        logs = Path(run_dir) / "logs"
        logs.mkdir(exist_ok=True)
        for file in keep:
            with contextlib.suppress(OSError):
                os.replace(d / file, logs / f"{name}.{file}")
    shutil.rmtree(d, ignore_errors=True)
