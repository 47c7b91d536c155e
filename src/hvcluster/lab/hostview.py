"""What the lab's hosts really run, read from ``/proc`` and never from the cluster's records:
the chaos checker's eyes (``lab/invariants.py``).

A QEMU process of the lab is found by its command line (``qemu-system-*`` naming a VM dir
under one of the lab nodes' run dirs, which says the node); the disk files it holds are its
open file descriptors (``/proc/<pid>/fd``). A sim VM's placeholder is a bare ``sleep``, so a
sim VM is found from its node's run dir, its pid checked against its start time in ``/proc``.

Whether a process runs its guest (:func:`runs_guest`) tells a live migration's two processes
apart: the target QEMU (``-incoming``) waits paused until the state has come over, and the
source stops its guest before the target starts it. QEMU is asked itself, on its second QMP
monitor (``qmp2.sock``: the agent holds the first), never the cluster; a sim VM's state file
says whether it is an incoming one.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from hvcluster.drivers.runtime import OBSERVE_SOCKET, vm_dir, vm_pid
from hvcluster.lab import processes
from hvcluster.lab.state import LabState

PROC = Path("/proc")


@dataclass(frozen=True)
class VMProcess:
    pid: int
    node: str
    vm: str
    disks: frozenset[str] = field(default_factory=frozenset)  # resolved paths it holds open
    stopped: bool = False  # SIGSTOPped: it runs no guest code now
    parent: int = 0
    dir: str = ""  # its VM dir (QMP sockets, the sim's state file)
    incoming: bool = False  # started as a live migration's target (QEMU's -incoming)
    qemu: bool = True


def _cmdline(pid: str) -> list[str]:
    try:
        raw = (PROC / pid / "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _open_files(pid: int) -> frozenset[str]:
    found = set()
    fd_dir = PROC / str(pid) / "fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return frozenset()
    for fd in names:
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue
        if target.startswith("/"):
            found.add(target)
    return frozenset(found)


def _option(argv: list[str], name: str) -> str:
    for flag, value in itertools.pairwise(argv):
        if flag == name:
            return value
    return ""


def _vm_name(argv: list[str]) -> str:
    return _option(argv, "-name").split(",", 1)[0]


def qemu_processes(state: LabState) -> list[VMProcess]:
    """Every QEMU process running a VM of one of the lab's nodes, with the files it holds."""
    run_dirs = {str(Path(n.run_dir).absolute()) + "/": n.name for n in state.nodes}
    found = []
    for entry in os.listdir(PROC):
        if not entry.isdigit():
            continue
        argv = _cmdline(entry)
        if not argv or not os.path.basename(argv[0]).startswith("qemu-system"):
            continue
        joined = " ".join(argv)
        node = next((name for d, name in run_dirs.items() if d in joined), None)
        if node is None:  # another lab's or someone else's QEMU
            continue
        pid = int(entry)
        if not processes.alive(pid):
            continue
        found.append(
            VMProcess(
                pid=pid,
                node=node,
                vm=_vm_name(argv),
                disks=_open_files(pid),
                stopped=processes.stopped(pid),
                parent=_parent(pid),
                dir=os.path.dirname(_option(argv, "-pidfile")),
                incoming="-incoming" in argv,
            )
        )
    # QEMU's -daemonize: the process started forks the one that runs the guest and waits
    # (holding no disk) until it is ready. That parent is not a second copy.
    waiting = {(p.parent, p.vm) for p in found}
    return [p for p in found if (p.pid, p.vm) not in waiting]


def _parent(pid: int) -> int:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def sim_processes(state: LabState, vms: list[str]) -> list[VMProcess]:
    """Every placeholder process of ``vms`` on the lab's nodes (from their run dirs, each pid
    checked in ``/proc``)."""
    found = []
    for node in state.nodes:
        for vm in vms:
            pid = vm_pid(vm_dir(Path(node.run_dir), vm))
            if pid is not None:
                d = str(vm_dir(Path(node.run_dir), vm))
                found.append(VMProcess(pid=pid, node=node.name, vm=vm, dir=d, qemu=False))
    return found


def vm_processes(state: LabState, vms: list[str]) -> list[VMProcess]:
    """The processes of the lab's VMs, as the hosts' process tables show them."""
    if state.driver == "qemu":
        return qemu_processes(state)
    return sim_processes(state, vms)


def runs_guest(p: VMProcess, timeout: float = 1.0) -> bool | None:
    """Whether ``p`` runs its guest now: QEMU's own ``query-status`` (its vCPUs run), or for a
    sim VM not an incoming one; None when it cannot be told (no answer: count it as running)."""
    if p.stopped:
        return False
    if not p.qemu:
        try:
            state = json.loads((Path(p.dir) / "sim.json").read_text())
        except (OSError, ValueError):
            return None
        if state.get("state") != "migrating":
            return True
        # a sim target waits; a sim source's switchover is not modelled apart: cannot tell
        return False if state.get("incoming") else None
    try:
        status = qmp_status(Path(p.dir) / OBSERVE_SOCKET, timeout)
    except (OSError, ValueError):
        return None
    return bool(status.get("running"))


def qmp_status(path: Path, timeout: float) -> dict[str, object]:
    """``query-status`` on a QMP socket: ``{"running": bool, "status": "inmigrate"...}``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        stream = sock.makefile("rwb")
        _answer(stream, None)  # the greeting
        for command in ("qmp_capabilities", "query-status"):
            stream.write(json.dumps({"execute": command}).encode() + b"\n")
            stream.flush()
            answer = _answer(stream, "return")
        return dict(answer) if isinstance(answer, dict) else {}


def _answer(stream: io.BufferedIOBase, key: str | None) -> object:
    """The next message of the monitor that is not an event (its ``key``, or all of it)."""
    while True:
        line = stream.readline()
        if not line:
            raise ValueError("the monitor closed the connection")
        message = json.loads(line)
        if "event" in message:
            continue
        if "error" in message:
            raise ValueError(f"QMP error: {message['error']}")
        return message if key is None else message.get(key)
