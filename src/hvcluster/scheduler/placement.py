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
from hvcluster.models.node import Node
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
        # node -> anti-affinity class -> residents of it: a VM's conflicts are looked up
        # among its classmates, not among every VM of every node (8,000 VMs x 64 nodes)
        self._classes: dict[str, dict[str, dict[str, Resident]]] = {}
        self._where: dict[str, set[str]] = {}  # vm -> the nodes it is counted on
        self._lacks: dict[tuple[str, frozenset[str], frozenset[str], str, str], str | None] = {}
        for vm in snapshot.vms.values():
            for node in sorted(vm.hosts()):
                self.add(node, vm.spec)

    def add(self, node: str, spec: VMSpec) -> None:
        """Count ``spec`` on ``node`` (once, however often it is added)."""
        here = self._residents.setdefault(node, {})
        if spec.name in here:
            return
        here[spec.name] = me = resident(spec)
        self._where.setdefault(spec.name, set()).add(node)
        if me.together:
            self._together.setdefault(node, {})[spec.name] = me
        for cls in me.classes:
            self._classes.setdefault(node, {}).setdefault(cls, {})[spec.name] = me
        self._cpus[node] = self._cpus.get(node, 0) + spec.vcpus
        self._memory[node] = self._memory.get(node, 0) + spec.memory_mib

    def used_cpus(self, node: str) -> int:
        return self._cpus.get(node, 0)

    def used_memory(self, node: str) -> int:
        return self._memory.get(node, 0)

    def residents(self, node: str) -> Iterable[Resident]:
        return self._residents.get(node, {}).values()

    def needs(self, spec: VMSpec) -> tuple[frozenset[str], frozenset[str], str] | None:
        """What of a node ``spec`` needs beyond room: its switches, volumes and CPU model
        (None: any node will do)."""
        switches = frozenset(nic.switch for nic in spec.nics)
        volumes = frozenset(d.volume for d in spec.disks if d.volume is not None)
        if not switches and not volumes and not spec.cpu_model:
            return None
        return switches, volumes, spec.cpu_model

    def lacks(
        self, spec: VMSpec, node: Node, needs: tuple[frozenset[str], frozenset[str], str]
    ) -> str | None:
        """:func:`~hvcluster.models.fit.lacks`, asked once per node and ``needs`` in a plan
        (the reason names the VM only for a CPU model: then it is asked per VM)."""
        key = (node.name, *needs, spec.name if needs[2] else "")
        if key not in self._lacks:
            self._lacks[key] = fit.lacks(spec, node)
        return self._lacks[key]

    def classmates(self, node: str, spec: VMSpec) -> Iterable[Resident]:
        """The residents of ``node`` sharing an anti-affinity class with ``spec``: the only
        ones :func:`~hvcluster.models.fit.conflicts` can find a conflict with."""
        here = self._classes.get(node)
        if not here or not spec.ha.anti_affinity_classes:
            return ()
        found: dict[str, Resident] = {}
        for cls in spec.ha.anti_affinity_classes:
            found.update(here.get(cls, {}))
        return found.values()

    def where(self, vm: str) -> Collection[str]:
        """The nodes ``vm`` is counted on."""
        return self._where.get(vm, ())

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
    return fit.misfit(spec, node.node, cpus, memory, ledger.classmates(name, spec))


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
    together = ledger.partners(spec, {*closed, *leaving})
    fits = _fits(spec, snapshot, closed, ledger, exclude, together, None)
    if not fits:  # asked again, to say why not node by node (rare: not worth it each time)
        rejections: list[str] = []
        _fits(spec, snapshot, closed, ledger, exclude, together, rejections)
        return NoFit(_no_fit(spec, rejections))
    soft, _, rank, _, best = min(fits)
    return Choice(best, _chosen(spec, snapshot.nodes[best], ledger, soft, rank, len(fits)))


def _fits(
    spec: VMSpec,
    snapshot: ClusterSnapshot,
    closed: Mapping[str, str],
    ledger: Ledger,
    exclude: Mapping[str, str],
    together: fit.Partners,
    rejections: list[str] | None,
) -> list[tuple[int, int, int, float, str]]:
    """Each node ``spec`` fits on, ranked (soft conflicts, affinity partners, preferred
    owner, load, name); with ``rejections``, why each other node does not, appended to it.

    The rules of :func:`misfit` and :func:`fit.apart`, in their order, written out: this
    loop runs for every node for every VM placed (8,000 x 64 at scale), so what does not
    depend on the ledger (switches, volumes, CPU model) is asked once per node and need,
    and the reasons are only made when asked for.
    """
    preferred = spec.ha.preferred_owners
    owners = spec.ha.possible_owners
    classes = bool(spec.ha.anti_affinity_classes)
    needs = ledger.needs(spec)
    reserved = ledger.where(spec.name)  # nodes where it is counted already (reserved for it)
    vcpus, vmemory = spec.vcpus, spec.memory_mib
    used_cpus, used_memory = ledger.used_cpus, ledger.used_memory
    fits: list[tuple[int, int, int, float, str]] = []
    for node in snapshot.nodes.values():
        stored = node.node
        name = stored.name
        why: str | None = None
        if name in closed:
            why = closed[name]
        elif name in exclude:
            why = exclude[name]
        elif owners and name not in owners:
            why = fit.not_owner(spec, name)
        elif needs is not None:
            why = ledger.lacks(spec, stored, needs)
        if why is not None:
            if rejections is not None:
                rejections.append(why)
            continue
        cpus, memory = used_cpus(name), used_memory(name)
        counted_cpus, counted_memory = cpus, memory
        if name in reserved:
            cpus, memory = cpus - vcpus, memory - vmemory
        cap = stored.capacity
        if vcpus > cap.cpus - cpus or vmemory > cap.memory_mib - memory:
            if rejections is not None:
                rejections.append(fit.no_room(spec, stored, cpus, memory) or "")
            continue
        mates = ledger.classmates(name, spec) if classes else ()
        if mates or together.hard:
            why = fit.hard_conflict(spec, name, mates) or fit.apart(spec, name, together)
            if why is not None:
                if rejections is not None:
                    rejections.append(why)
                continue
        soft = conflicts(spec, mates).soft if mates else 0
        rank = preferred.index(name) if name in preferred else len(preferred)
        # load(): the higher of CPU and memory use, as counted (inline: see above)
        use = max(counted_cpus / cap.cpus, counted_memory / cap.memory_mib)
        fits.append((soft, -together.soft.get(name, 0), rank, use, name))
    return fits


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
