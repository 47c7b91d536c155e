"""The lab's etcd members: 1, 3 or 5 detached ``etcd`` processes with TLS on client and peer
links, each with its own data dir, and (in a netns lab) its own network namespace, so that a
node cut off from etcd is a real cut link. A member can be killed, frozen, resumed and started
again on its ports and data dir (``hvc lab fault etcd-kill|etcd-stop|etcd-cont|etcd-start``).
"""

from __future__ import annotations

import json
import signal
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from hvcluster.host.pki import Authority, CertFiles
from hvcluster.lab import processes
from hvcluster.lab.etcd import EtcdProcess
from hvcluster.lab.netns import LabNet
from hvcluster.lab.state import LabEtcd, LabState
from hvcluster.models.errors import HvcError

SIZES = (1, 3, 5)
LOOPBACK = "127.0.0.1"
# Raft timings of the lab's members. etcd's defaults (heartbeat 100 ms, election 1000 ms)
# suit members a few milliseconds apart; the lab's are microseconds apart, and a frozen or
# dead leader costs the nodes an election with no evidence for Safety rule 5 (the others
# still name it): election timeout (randomised up to twice it) + the vote must fit in
# fence_after - keepalive interval - a reconnect, 0.5 s with the fast profile. Measured
# here (load 13 on 2 cores): a new leader 0.24 to 0.68 s after the leader froze, against
# 1.05 to 3.4 s with the defaults, and no spurious election in 20 s.
HEARTBEAT_MS = 25
ELECTION_MS = 250


class MemberError(HvcError):
    """An etcd member of the lab could not be started or signalled."""


def plan(
    lab_dir: Path,
    size: int,
    net: LabNet | None,
    pki: Authority,
    client: CertFiles,
    loopback_ports: Sequence[int],
) -> list[LabEtcd]:
    """``size`` members' commands: in a netns lab member ``j`` listens on its namespace's
    address on etcd's usual ports; on loopback, on ``loopback_ports`` (two per member)."""
    if size not in SIZES:
        raise MemberError(f"etcd: a lab runs 1, 3 or 5 members, got {size}")
    names = [f"etcd{j}" for j in range(size)]
    if net is not None:
        hosts = [net.etcd_ip(j) for j in range(size)]
        ports = [2379, 2380] * size
    else:
        hosts = [LOOPBACK] * size
        ports = list(loopback_ports[: 2 * size])
    initial = ",".join(f"{n}=https://{hosts[j]}:{ports[2 * j + 1]}" for j, n in enumerate(names))
    members = []
    for j, name in enumerate(names):
        process = EtcdProcess(
            name,
            lab_dir / "etcd" / name,
            ports[2 * j],
            ports[2 * j + 1],
            initial,
            f"hvc-lab-{ports[0]}",
            heartbeat_ms=HEARTBEAT_MS,
            election_ms=ELECTION_MS,
            host=hosts[j],
            tls=pki.issue(name, [hosts[j], LOOPBACK, "localhost"]),
            client_tls=client,
        )
        members.append(
            LabEtcd(
                name=name,
                address=hosts[j],
                client_url=process.client_url,
                command=tuple(process.command()),
                data_dir=str(process.data_dir),
                log=str(process.log_path),
            )
        )
    return members


def spawn(state: LabState, member: LabEtcd) -> LabEtcd:
    """Start ``member`` (its own namespace in a netns lab); the member with its pid."""
    Path(member.data_dir).mkdir(parents=True, exist_ok=True)
    argv: Sequence[str] = member.command
    if state.net is not None:
        argv = state.net.enter(member.name, argv)
    pid = processes.spawn(argv, Path(member.log))
    return member.model_copy(update={"pid": pid})


def healthy(state: LabState, member: LabEtcd, timeout: float = 1.0) -> bool:
    """True when ``member`` answers ``/health`` with ``true`` (it has a leader)."""
    try:
        context = ssl.create_default_context(cafile=state.ca)
        context.load_cert_chain(state.client_cert, state.client_key)
        url = f"{member.client_url}/health"
        with urllib.request.urlopen(url, timeout=timeout, context=context) as r:
            return bool(json.loads(r.read()).get("health") == "true")
    except (OSError, ValueError, urllib.error.URLError):
        return False


def quorum(state: LabState) -> bool:
    """True when some member says it has a leader."""
    return any(healthy(state, m, 0.5) for m in state.etcd_members if processes.alive(m.pid))


def wait(predicate: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def kill(state: LabState, name: str) -> tuple[LabState, str]:
    """SIGKILL: the member crashes (its host stays up, so its port refuses connections)."""
    member = _running(state, name)
    processes.kill([member.pid])
    return state, f"killed (SIGKILL) etcd member {name} (pid {member.pid})"


def stop(state: LabState, name: str) -> tuple[LabState, str]:
    """SIGSTOP: the member freezes with its sockets open (clients time out)."""
    member = _running(state, name)
    processes.signal_pid(member.pid, signal.SIGSTOP)
    return state, f"stopped (SIGSTOP) etcd member {name} (pid {member.pid})"


def cont(state: LabState, name: str) -> tuple[LabState, str]:
    member = _running(state, name)
    processes.signal_pid(member.pid, signal.SIGCONT)
    return state, f"continued (SIGCONT) etcd member {name} (pid {member.pid})"


def start(state: LabState, name: str, timeout: float = 5.0) -> tuple[LabState, str]:
    """Start a dead member again with its data dir (``a,b,c``: those members at once, as
    after a power cut); wait (up to ``timeout``) until it has a leader, which it cannot have
    while most members are still down: then it says so."""
    names = [n.strip() for n in name.split(",") if n.strip()]
    for n in names:
        member = state.member(n)
        if processes.alive(member.pid):
            how = "stopped: use etcd-cont" if processes.stopped(member.pid) else "running"
            raise MemberError(f"etcd member {n} is already {how} (pid {member.pid})")
    started = []
    for n in names:
        member = spawn(state, state.member(n))
        state = state.with_member(member)
        started.append(member)
    ready = wait(lambda: all(healthy(state, m, 0.5) for m in started), timeout)
    said = "healthy" if ready else f"no leader yet after {timeout:.0f}s (no quorum?)"
    which = ", ".join(f"{m.name} (pid {m.pid})" for m in started)
    return state, f"started etcd member {which} again (same data dir): {said}"


def _running(state: LabState, name: str) -> LabEtcd:
    member = state.member(name)
    if not processes.alive(member.pid):
        raise MemberError(f"etcd member {name} is not running: 'etcd-start {name}' first")
    return member
