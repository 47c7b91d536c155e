"""Choosing a node for a VM: capacity, owners, anti-affinity, spread.

The rules, in order:

1. Only *open* nodes take VMs: alive and admin state ``up`` (paused, draining and quarantined
   nodes take none). The caller says which nodes are open and why the others are not.
2. Possible owners: when the VM lists any, only those.
   Switches and volumes: the node must report every switch of the VM's NICs and every
   volume of its disks (with the reason the node gave when it lacks one).
3. Capacity: the VM's vCPUs and memory must fit in the node's capacity minus every VM that
   may hold resources there (placed there, reported active there, or on its way there by a
   cold move or a migration under way: a VM being migrated counts on its source until the
   flip *and* on its target from the moment one is named) - including VMs placed earlier in
   the same plan (the :class:`Ledger` is updated as the plan goes). No overcommit.
4. Hard anti-affinity: two VMs sharing an anti-affinity class never share a node when either
   of them enforces it. If no node is left, the VM is not placed, with that reason.
5. Among the nodes that fit, the best is the one with, in order: the fewest soft
   anti-affinity conflicts (VMs sharing a class, neither enforcing it); the most preferred
   owner (preferred owners in their order, then every other node); the least load (the
   higher of its CPU and memory use, as a fraction of capacity); the smallest name. Soft
   anti-affinity comes before preferred owners because keeping the members of a class apart
   (two domain controllers that both prefer n1) is the point of the class; among equally
   conflicted nodes, the first preferred owner that fits wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hvcluster.models.guestcpu import cannot_provide
from hvcluster.models.node import Node
from hvcluster.models.vm import VMSpec
from hvcluster.scheduler.snapshot import ClusterSnapshot, NodeView

_MAX_REJECTIONS_SHOWN = 6


@dataclass(frozen=True)
class Resident:
    """A VM that holds (or may hold) resources on a node."""

    vm: str
    classes: frozenset[str]
    enforced: bool


def resident(spec: VMSpec) -> Resident:
    return Resident(
        spec.name, frozenset(spec.ha.anti_affinity_classes), spec.ha.anti_affinity_enforced
    )


class Ledger:
    """What every node has in use, updated as a plan places VMs. Local to one plan call."""

    def __init__(self, snapshot: ClusterSnapshot) -> None:
        self._cpus: dict[str, int] = {}
        self._memory: dict[str, int] = {}
        self._residents: dict[str, dict[str, Resident]] = {}
        for vm in snapshot.vms.values():
            for node in sorted(vm.hosts()):
                self.add(node, vm.spec)

    def add(self, node: str, spec: VMSpec) -> None:
        """Count ``spec`` on ``node`` (once, however often it is added)."""
        here = self._residents.setdefault(node, {})
        if spec.name in here:
            return
        here[spec.name] = resident(spec)
        self._cpus[node] = self._cpus.get(node, 0) + spec.vcpus
        self._memory[node] = self._memory.get(node, 0) + spec.memory_mib

    def used_cpus(self, node: str) -> int:
        return self._cpus.get(node, 0)

    def used_memory(self, node: str) -> int:
        return self._memory.get(node, 0)

    def residents(self, node: str) -> Iterable[Resident]:
        return self._residents.get(node, {}).values()

    def hosts(self, node: str, vm: str) -> bool:
        return vm in self._residents.get(node, {})


@dataclass(frozen=True)
class Conflicts:
    hard: tuple[tuple[str, str], ...]  # (other vm, shared class)
    soft: int


def conflicts(spec: VMSpec, residents: Iterable[Resident]) -> Conflicts:
    """Anti-affinity conflicts of ``spec`` with the VMs of one node (itself excluded)."""
    me = resident(spec)
    hard: list[tuple[str, str]] = []
    soft = 0
    for other in sorted(residents, key=lambda r: r.vm):
        if other.vm == me.vm:
            continue
        shared = me.classes & other.classes
        if not shared:
            continue
        if me.enforced or other.enforced:
            hard.append((other.vm, min(shared)))
        else:
            soft += 1
    return Conflicts(tuple(hard), soft)


def load(node: NodeView, ledger: Ledger) -> float:
    """The higher of the node's CPU and memory use, as a fraction of its capacity."""
    cap = node.node.capacity
    return max(
        ledger.used_cpus(node.name) / cap.cpus, ledger.used_memory(node.name) / cap.memory_mib
    )


def lacks(spec: VMSpec, node: Node) -> str | None:
    """Why ``node`` cannot run ``spec`` for want of its switches (the NICs' switches) or its
    volumes (the disks' volumes), as the node's agent reports them, or of the CPU model the
    spec names; or ``None``."""
    parts = []
    switches = sorted({nic.switch for nic in spec.nics} - set(node.switches))
    if switches:
        parts.append(_missing("switch", switches, node.switch_problems))
    volumes = sorted({d.volume for d in spec.disks if d.volume is not None} - set(node.volumes))
    if volumes:
        parts.append(_missing("volume", volumes, node.volume_problems))
    if parts:
        return f"{node.name} lacks {' and '.join(parts)}"
    if spec.cpu_model and (why := cannot_provide(node, spec.cpu_model)) is not None:
        return f"{spec.name} names CPU {why}"  # the spec's model, for any start there
    return None


def _missing(what: str, names: list[str], problems: Mapping[str, str]) -> str:
    return ", ".join(
        f"{what} {n!r}" + (f" ({problems[n]})" if n in problems else "") for n in names
    )


def misfit(spec: VMSpec, node: NodeView, ledger: Ledger) -> str | None:
    """Why ``spec`` does not fit on ``node`` (switches and volumes, capacity, hard
    anti-affinity), or ``None``."""
    lacking = lacks(spec, node.node)
    if lacking is not None:
        return lacking
    cap, name = node.node.capacity, node.name
    free_cpus = cap.cpus - ledger.used_cpus(name)
    free_memory = cap.memory_mib - ledger.used_memory(name)
    if ledger.hosts(name, spec.name):  # already counted there (reserved for it): not twice
        free_cpus += spec.vcpus
        free_memory += spec.memory_mib
    if spec.vcpus > free_cpus:
        return f"{name} has {max(free_cpus, 0)} of {cap.cpus} vCPUs free"
    if spec.memory_mib > free_memory:
        return f"{name} has {max(free_memory, 0)} of {cap.memory_mib} MiB free"
    hard = conflicts(spec, ledger.residents(name)).hard
    if hard:
        other, cls = hard[0]
        return f"{name} runs {other} of hard anti-affinity class {cls!r}"
    return None


@dataclass(frozen=True)
class Choice:
    node: str
    why: str


@dataclass(frozen=True)
class NoFit:
    why: str


def choose_node(
    spec: VMSpec,
    snapshot: ClusterSnapshot,
    closed: Mapping[str, str],
    ledger: Ledger,
    exclude: Mapping[str, str] | None = None,
) -> Choice | NoFit:
    """The best node for ``spec``, or why none fits.

    ``closed`` maps nodes that take no VMs to the reason (dead, paused, quarantined, ...);
    ``exclude`` maps further nodes to skip for this VM (e.g. where it just failed) to why.
    """
    exclude = exclude or {}
    possible = spec.ha.possible_owners
    preferred = spec.ha.preferred_owners
    rejections: list[str] = []
    fits: list[tuple[int, int, float, str]] = []
    for node in snapshot.nodes.values():
        name = node.name
        if name in closed:
            rejections.append(closed[name])
        elif name in exclude:
            rejections.append(exclude[name])
        elif possible and name not in possible:
            rejections.append(f"{name} is not a possible owner")
        elif (why_not := misfit(spec, node, ledger)) is not None:
            rejections.append(why_not)
        else:
            soft = conflicts(spec, ledger.residents(name)).soft
            rank = preferred.index(name) if name in preferred else len(preferred)
            fits.append((soft, rank, load(node, ledger), name))
    if not fits:
        return NoFit(_no_fit(spec, rejections))
    soft, rank, _, best = min(fits)
    return Choice(best, _chosen(spec, snapshot.nodes[best], ledger, soft, rank, len(fits)))


def _chosen(spec: VMSpec, node: NodeView, ledger: Ledger, soft: int, rank: int, count: int) -> str:
    name, cap = node.name, node.node.capacity
    if rank < len(spec.ha.preferred_owners):
        parts = [f"preferred owner #{rank + 1}"]
    elif count > 1:
        parts = [f"least loaded of {count} nodes that fit"]
    else:
        parts = ["the only node that fits"]
    classes = ", ".join(repr(c) for c in spec.ha.anti_affinity_classes)
    if classes:
        if soft:
            parts.append(f"{soft} other VM(s) of class {classes} there, the fewest possible")
        else:
            parts.append(f"no other VM of class {classes} there")
    parts.append(
        f"{ledger.used_cpus(name)}/{cap.cpus} vCPUs and "
        f"{ledger.used_memory(name)}/{cap.memory_mib} MiB in use before it"
    )
    return f"{name}: {', '.join(parts)}"


def _no_fit(spec: VMSpec, rejections: list[str]) -> str:
    head = f"no node fits {spec.name} ({spec.vcpus} vCPUs, {spec.memory_mib} MiB)"
    if not rejections:
        return f"{head}: the cluster has no nodes"
    shown = rejections[:_MAX_REJECTIONS_SHOWN]
    more = len(rejections) - len(shown)
    tail = f"; and {more} more" if more else ""
    return f"{head}: {'; '.join(shown)}{tail}"
