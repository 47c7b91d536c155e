"""``hvc lab fault``: real faults injected into a running lab, each one recorded.

Node faults act on a node's processes (``kill``, ``kill-agent``, ``stop``, ``cont``,
``delay``) or its network (``partition``, ``heal``); etcd faults on one member's process
(``etcd-kill``, ``etcd-stop``, ``etcd-cont``, ``etcd-start``); ``vm-kill`` on a VM's own
process, found from the hosts' run dirs and process table (``/proc``), never from the
cluster's records, as a crash would.

Each fault is written to the cluster log as an event of kind ``lab.fault`` (subject the
member, node or VM; the reason says what was done; actor ``hvc lab``), straight into etcd with
the lab's client certificate: there is no API route for writing events, and an event must be
recordable while the APIs have no store to write to. When etcd has no quorum (the fault just
took it away), the event keeps its time and waits in ``<lab dir>/faults.pending.jsonl``; the
next fault that finds a quorum writes it first. So an event's time is when the fault
happened; its sequence number, when etcd could take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

from hvcluster.drivers.runtime import vm_dir, vm_pid
from hvcluster.lab import members, netns, processes
from hvcluster.lab.cluster import LabError, vm_pids
from hvcluster.lab.state import LabState, save
from hvcluster.models.base import decode, encode
from hvcluster.models.errors import CorruptValue, HvcError, StoreError
from hvcluster.models.event import Event
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.etcd_conn import EtcdTls
from hvcluster.store.events import EventLog
from hvcluster.store.keys import Keys

KIND = "lab.fault"
ACTOR = "hvc lab"
PENDING = "faults.pending.jsonl"
WRITE_TIMEOUT_S = 2.0
NODE_FAULTS = ("kill", "kill-agent", "stop", "cont", "delay", "partition", "heal")
ETCD_FAULTS = ("etcd-kill", "etcd-stop", "etcd-cont", "etcd-start")
FAULTS = (*NODE_FAULTS, *ETCD_FAULTS, "vm-kill")
PARTITION_FROM = ("etcd", "nodes", "all")


def fault(
    state: LabState,
    action: str,
    target: str,
    *,
    ms: int | None = None,
    source: str = "all",
    record: bool = True,
) -> str:
    """Inject fault ``action`` into ``target`` (a node, an etcd member or a VM); return what
    was done, and (``record``) what became of its event."""
    if action in ETCD_FAULTS:
        subject = f"etcd/{target}"
        state, said = _etcd_fault(state, action, target)
        save(state)
    elif action == "vm-kill":
        subject, said = f"vm/{target}", vm_kill(state, target)
    elif action in NODE_FAULTS:
        subject, said = f"node/{target}", _node_fault(state, action, target, ms, source)
    else:
        raise LabError(f"unknown fault {action!r}: use one of {', '.join(FAULTS)}")
    if not record:
        return said
    event = Event(
        time=time.time(),
        kind=KIND,
        subject=subject,
        reason=said,
        actor=ACTOR,
        data={"fault": action, "target": target},
    )
    return f"{said}\n{write_events(state, event)}"


def _etcd_fault(state: LabState, action: str, name: str) -> tuple[LabState, str]:
    if action == "etcd-kill":
        return members.kill(state, name)
    if action == "etcd-stop":
        return members.stop(state, name)
    if action == "etcd-cont":
        return members.cont(state, name)
    return members.start(state, name)


def _node_fault(state: LabState, action: str, name: str, ms: int | None, source: str) -> str:
    node = state.node(name)
    if action == "kill":  # the host crashes: agent, watchdog and its VMs die at once
        vms = vm_pids(node)
        processes.kill([node.agent_pid, node.watchdog_pid, *vms])
        return (
            f"killed {name}: agent {node.agent_pid}, watchdog {node.watchdog_pid}, "
            f"{len(vms)} VM process(es)"
        )
    if action == "kill-agent":  # only the agent dies (kill -9); VMs and watchdog stay
        processes.kill([node.agent_pid])
        return f"killed the agent of {name} (pid {node.agent_pid})"
    if action == "stop":  # a hung host: the agent freezes
        processes.signal_pid(node.agent_pid, signal.SIGSTOP)
        return f"stopped (SIGSTOP) the agent of {name} (pid {node.agent_pid})"
    if action == "cont":
        processes.signal_pid(node.agent_pid, signal.SIGCONT)
        return f"continued (SIGCONT) the agent of {name} (pid {node.agent_pid})"
    if action == "delay":
        return delay(state, name, ms)
    return _network_fault(state, action, name, source)


def delay(state: LabState, name: str, ms: int | None) -> str:
    """A stall of ``ms`` milliseconds: the node's agent SIGSTOPped, then SIGCONTed (no netem
    in this kernel, so no delayed packets: a frozen agent stands for a slow host or link;
    its watchdog keeps counting and fires if the stall outlasts ``fence_after``)."""
    if ms is None or ms <= 0:
        raise LabError("delay needs a length in milliseconds > 0, e.g. 'delay n1 1500'")
    pid = state.node(name).agent_pid
    if not processes.alive(pid):
        raise LabError(f"the agent of {name} is not running (pid {pid})")
    processes.signal_pid(pid, signal.SIGSTOP)
    try:
        time.sleep(ms / 1000)
    finally:
        processes.signal_pid(pid, signal.SIGCONT)
    return f"stalled the agent of {name} (pid {pid}) for {ms} ms (SIGSTOP, then SIGCONT)"


def _network_fault(state: LabState, action: str, name: str, source: str) -> str:
    net = state.net
    if net is None:
        raise LabError("partition and heal need a lab with its own network: 'hvc lab up --netns'")
    if action == "heal":
        netns.unblock(net, name)
        netns.set_link(net, name, True)
        return f"healed {name}: its link {net.veth(name)} is up, nothing dropped"
    if source not in PARTITION_FROM:
        raise LabError(f"partition --from: use etcd, nodes or all, got {source!r}")
    if source == "all":  # the node's cable pulled
        netns.set_link(net, name, False)
        return f"partitioned {name}: its link {net.veth(name)} is down (processes run on)"
    peers = (
        [m.address for m in state.etcd_members]
        if source == "etcd"
        else [n.address for n in state.nodes if n.name != name]
    )
    netns.block(net, name, peers)
    return f"partitioned {name} from {source} ({', '.join(peers)}): packets dropped both ways"


def find_vm(state: LabState, vm: str) -> list[tuple[str, int]]:
    """Every (node, pid) running ``vm``'s process, from the nodes' run dirs, each pid checked
    against its start time in ``/proc`` (a recycled pid is not the VM)."""
    found = []
    for node in state.nodes:
        pid = vm_pid(vm_dir(Path(node.run_dir), vm))
        if pid is not None:
            found.append((node.name, pid))
    return found


def vm_kill(state: LabState, vm: str) -> str:
    """SIGKILL ``vm``'s QEMU (or sim placeholder) process wherever it runs: a VM crash."""
    found = find_vm(state, vm)
    if not found:
        raise LabError(f"no process of VM {vm!r} runs on any lab node")
    processes.kill([pid for _, pid in found])
    where = ", ".join(f"pid {pid} on {node}" for node, pid in found)
    return f"killed (SIGKILL) the process of VM {vm}: {where}"


def write_events(state: LabState, *events: Event) -> str:
    """Write the pending events and ``events`` to the cluster log; what became of them."""
    pending_file = Path(state.dir) / PENDING
    queued = [*pending_events(pending_file), *events]
    total = len(queued)
    try:
        asyncio.run(_append(state, queued))
    except (StoreError, OSError, TimeoutError) as e:
        pending_file.write_text("".join(encode(ev).decode() + "\n" for ev in queued))
        return (
            f"event not written yet (etcd: {e or type(e).__name__}); kept in {pending_file} "
            f"for the next fault ({len(queued)} waiting)"
        )
    pending_file.unlink(missing_ok=True)
    return f"event {KIND} written" + (f" (and {total - 1} that waited)" * (total > 1))


def pending_events(path: Path) -> list[Event]:
    """The events waiting in ``path`` for etcd to take them."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        with contextlib.suppress(CorruptValue, HvcError, ValueError):
            found.append(decode(Event, str(path), line))
    return found


async def _append(state: LabState, events: list[Event]) -> None:
    """Append ``events`` in order, removing each from the list once written."""
    tls = None
    if state.ca:
        tls = EtcdTls(Path(state.ca), Path(state.client_cert), Path(state.client_key))
    store = EtcdStore(list(state.etcd_endpoints), timeout=WRITE_TIMEOUT_S, tls=tls)
    try:
        log = EventLog(store, Keys(state.cluster))
        while events:
            await asyncio.wait_for(log.append(events[0]), 3 * WRITE_TIMEOUT_S)
            events.pop(0)
    finally:
        await store.close()
