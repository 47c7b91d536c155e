"""Choosing a node for a VM: capacity, owners, anti-affinity, spread.

The rules, in order:

1. Only *open* nodes take VMs: alive and admin state ``up`` (paused, draining and quarantined
   nodes take none). The caller says which nodes are open and why the others are not.
2. Possible owners: when the VM lists any, only those.
   Switches and volumes: the node must report every switch of the VM's NICs and every
   volume of its disks (with the reason the node gave when it lacks one).
   Rules 2 to 4 are the one fitting rule of :mod:`hvcluster.models.fit`, shared with the API.
3. Capacity: the VM's vCPUs and memory must fit in the node's capacity minus every VM that
   may hold resources there (placed there, reported active there, or on its way there by a
   cold move or a migration under way: a VM being migrated counts on its source until the
   flip *and* on its target from the moment one is named) - including VMs placed earlier in
   the same plan (the :class:`Ledger` is updated as the plan goes). No overcommit.
4. Hard anti-affinity: two VMs sharing an anti-affinity class never share a node when either
   of them enforces it. Hard (positive) affinity: two VMs sharing an affinity class run on
   one node when either enforces it: while a partner is on an open node, only that node
   (partners on nodes that take no VMs - dead, paused, draining - do not bind: the first of
   a group to move picks the node, the others follow it). If no node is left, the VM is
   not placed, with that reason.
5. Among the nodes that fit, the best is the one with, in order: the fewest soft
   anti-affinity conflicts (VMs sharing a class, neither enforcing it); the most soft
   affinity partners (VMs sharing an affinity class); the most preferred owner (preferred
   owners in their order, then every other node); the least load (the
   higher of its CPU and memory use, as a fraction of capacity); the smallest name. Soft
   anti-affinity comes before preferred owners because keeping the members of a class apart
   (two domain controllers that both prefer n1) is the point of the class; among equally
   conflicted nodes, the first preferred owner that fits wins.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from hvcluster.models import fit
from hvcluster.models.fit import Resident, conflicts, resident
from hvcluster.models.vm import VMSpec
from hvcluster.scheduler.snapshot import ClusterSnapshot, NodeView

_MAX_REJECTIONS_SHOWN = 6


class Ledger:
    """What every node has in use, updated as a plan places VMs. Local to one plan call."""

    def __init__(self, snapshot: ClusterSnapshot) -> None:
        self._cpus: dict[str, int] = {}
        self._memory: dict[str, int] = {}
        self._residents: dict[str, dict[str, Resident]] = {}
        self._together: dict[str, dict[str, Resident]] = {}  # residents with affinity
        for vm in snapshot.vms.values():
            for node in sorted(vm.hosts()):
                self.add(node, vm.spec)

    def add(self, node: str, spec: VMSpec) -> None:
        """Count ``spec`` on ``node`` (once, however often it is added)."""
        here = self._residents.setdefault(node, {})
        if spec.name in here:
            return
        here[spec.name] = me = resident(spec)
        if me.together:
            self._together.setdefault(node, {})[spec.name] = me
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

    def partners(self, spec: VMSpec, skip: Collection[str] = ()) -> fit.Partners:
        """Where the affinity partners of ``spec`` are, on nodes not in ``skip``."""
        if not spec.ha.affinity_classes:
            return fit.Partners({}, {})
        return fit.partners(
            spec,
            ((n, r) for n, here in self._together.items() if n not in skip for r in here.values()),
        )


def load(node: NodeView, ledger: Ledger) -> float:
    """The higher of the node's CPU and memory use, as a fraction of its capacity."""
    cap = node.node.capacity
    return max(
        ledger.used_cpus(node.name) / cap.cpus, ledger.used_memory(node.name) / cap.memory_mib
    )


def misfit(spec: VMSpec, node: NodeView, ledger: Ledger) -> str | None:
    """Why ``spec`` does not fit on ``node`` by the rule of :func:`hvcluster.models.fit.misfit`
    (switches, volumes, CPU model, capacity, hard anti-affinity), with what ``ledger`` counts
    in use there; or ``None``."""
    name = node.name
    cpus, memory = ledger.used_cpus(name), ledger.used_memory(name)
    if ledger.hosts(name, spec.name):  # already counted there (reserved for it): not twice
        cpus, memory = cpus - spec.vcpus, memory - spec.memory_mib
    return fit.misfit(spec, node.node, cpus, memory, ledger.residents(name))


@dataclass(frozen=True)
class Choice:
    """The node chosen for a VM, and why that one (said in the decision's reason)."""

    node: str
    why: str


@dataclass(frozen=True)
class NoFit:
    """No node fits the VM: why not, node by node (at most a few shown)."""

    why: str


def choose_node(
    spec: VMSpec,
    snapshot: ClusterSnapshot,
    closed: Mapping[str, str],
    ledger: Ledger,
    exclude: Mapping[str, str] | None = None,
    leaving: Collection[str] = (),
) -> Choice | NoFit:
    """The best node for ``spec``, or why none fits.

    ``closed`` maps nodes that take no VMs to the reason (dead, paused, quarantined, ...);
    ``exclude`` maps further nodes to skip for this VM (e.g. where it just failed) to why;
    ``leaving``: nodes whose VMs are all moving off (a drained one), where affinity
    partners do not hold this VM.
    """
    exclude = exclude or {}
    preferred = spec.ha.preferred_owners
    rejections: list[str] = []
    fits: list[tuple[int, int, int, float, str]] = []
    together = ledger.partners(spec, {*closed, *leaving})
    for node in snapshot.nodes.values():
        name = node.name
        if name in closed:
            rejections.append(closed[name])
        elif name in exclude:
            rejections.append(exclude[name])
        elif (not_owner := fit.not_owner(spec, name)) is not None:
            rejections.append(not_owner)
        elif why_not := misfit(spec, node, ledger) or fit.apart(spec, name, together):
            rejections.append(why_not)
        else:
            soft = conflicts(spec, ledger.residents(name)).soft
            rank = preferred.index(name) if name in preferred else len(preferred)
            fits.append((soft, -together.soft.get(name, 0), rank, load(node, ledger), name))
    if not fits:
        return NoFit(_no_fit(spec, rejections))
    soft, _, rank, _, best = min(fits)
    return Choice(best, _chosen(spec, snapshot.nodes[best], ledger, soft, rank, len(fits)))


def _chosen(spec: VMSpec, node: NodeView, ledger: Ledger, soft: int, rank: int, count: int) -> str:
    name, cap = node.name, node.node.capacity
    mates = ledger.partners(spec).soft.get(name, 0)
    if rank < len(spec.ha.preferred_owners):
        parts = [f"preferred owner #{rank + 1}"]
    elif count > 1 and not mates:
        parts = [f"least loaded of {count} nodes that fit"]
    elif count == 1:
        parts = ["the only node that fits"]
    else:
        parts = []
    if mates:
        parts.append(f"beside {mates} VM(s) it has affinity with")
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
