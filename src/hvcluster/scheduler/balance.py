"""Balancing load: which running VMs move live off loaded nodes, and where. Pure.

A node's load is its CPU use (measured, averaged over a window: :class:`CpuUse`) and its
memory (the memory of the VMs it holds; there is no overcommit, so what is given is used),
each as a fraction of its capacity. The level (``balance.level``: low, medium, high) names a
fraction, as a failover cluster's balancer has them: 80, 70 or 60 %. A node is *over* when
its CPU or its memory use is above the level **and** above the cluster's average of it (the
average over the nodes that take part: alive, up, watchdog acknowledging); so a cluster
loaded evenly above the level moves nothing, since no move would help.

The plan relieves each over node, the most over first, with as few live migrations as it
can: while the node is over, it moves the smallest VM (or hard-affinity group: such VMs move
together, one migration each) that alone brings the node within, else the one that takes
the most of its excess off per migration. A VM goes to the best node that fits it by the
one fitting rule (:mod:`hvcluster.models.fit`: possible owners, switches, volumes, CPU model,
capacity counting both ends of every move, hard anti-affinity, hard affinity) and that a
live migration can reach, and that stays within the level (and the average) itself with it.
Among those: the fewest soft anti-affinity conflicts, the most soft affinity partners, the
most preferred owner, the lowest load, the smallest name. Only VMs running where they are
placed, wanting to run, and not moving already are moved; each at most once per plan, so a
plan never has more moves than the VMs on over nodes, and a balanced cluster has none.

The concurrent-migration limit (``migration.max_parallel_per_node``, counting a node as
source and as target, with the migrations under way) splits the plan into waves; the
controller starts the first and plans again once it is done. Every move carries its
reason; a node the plan cannot bring within the level says why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hvcluster.models import fit
from hvcluster.models.config import BALANCE_LEVELS
from hvcluster.scheduler.compat import move_blockers
from hvcluster.scheduler.drain import InFlight, closed_for_drain
from hvcluster.scheduler.placement import Ledger
from hvcluster.scheduler.snapshot import ClusterSnapshot, VMView

EPS = 1e-9


@dataclass(frozen=True)
class CpuUse:
    """Measured CPU use in cores, averaged over the balance window: each node's besides its
    guests (the host's own work; it stays when a guest leaves) and each VM's (it goes where
    the VM goes). What is not measured counts nothing."""

    other: Mapping[str, float] = field(default_factory=dict)
    vms: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class BalanceMove:
    """Move ``vm`` live from ``source`` to ``target``; ``wave`` 1 may start now, a later
    one after the waves before it (the concurrent-migration limit)."""

    vm: str
    source: str
    target: str
    wave: int
    reason: str


@dataclass(frozen=True)
class BalancePlan:
    moves: tuple[BalanceMove, ...]
    over: tuple[str, ...]  # the nodes above the level before the plan
    unresolved: tuple[str, ...]  # a sentence for each node the plan leaves above it
    reason: str  # the plan in one sentence

    @property
    def first_wave(self) -> tuple[BalanceMove, ...]:
        return tuple(m for m in self.moves if m.wave == 1)


@dataclass
class _Load:
    """One taking-part node's use and how much it may use (level or average, the higher)."""

    cpus: float
    memory: float
    cpu: float = 0.0
    mem: float = 0.0
    cpu_limit: float = 0.0
    mem_limit: float = 0.0

    def excess(self) -> tuple[float, float]:
        return max(0.0, self.cpu - self.cpu_limit), max(0.0, self.mem - self.mem_limit)

    def over(self) -> bool:
        cpu, mem = self.excess()
        return cpu > EPS or mem > EPS

    def fraction(self) -> float:
        return max(self.cpu / self.cpus, self.mem / self.memory)


@dataclass(frozen=True)
class _Unit:
    """VMs that move together (one, or a hard-affinity group on one node)."""

    vms: tuple[VMView, ...]
    cpu: float
    mem: float

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.vms)


def level_of(name: str) -> float:
    return BALANCE_LEVELS[name]


def load_node(vm: VMView) -> str | None:
    """Where ``vm``'s load is (or will be, a migration under way): its target, else its
    placement, else where it is reported active."""
    if vm.migrating_to is not None:
        return vm.migrating_to
    if vm.placement is not None:
        return vm.placement.node
    return vm.active_on


def _node_loads(
    snapshot: ClusterSnapshot, cpu: CpuUse, taking_part: Iterable[str]
) -> dict[str, _Load]:
    """Each taking-part node's :class:`_Load` (limits not yet set)."""
    loads = {
        n: _Load(
            float(snapshot.nodes[n].node.capacity.cpus),
            float(snapshot.nodes[n].node.capacity.memory_mib),
        )
        for n in taking_part
    }
    for vm in snapshot.vms.values():
        where = load_node(vm)
        if where in loads:
            loads[where].mem += vm.spec.memory_mib
            loads[where].cpu += cpu.vms.get(vm.name, 0.0)
    for name, load in loads.items():
        load.cpu += cpu.other.get(name, 0.0)
    return loads


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def plan_balance(
    snapshot: ClusterSnapshot,
    cpu: CpuUse,
    in_flight: Iterable[InFlight] = (),
    level: str | None = None,
) -> BalancePlan:
    """The balance plan of ``snapshot`` at ``level`` (default: the config's), with the
    migrations ``in_flight`` counted. See the module's docstring."""
    level = level or snapshot.config.balance.level
    threshold = level_of(level)
    closed = closed_for_drain(snapshot)
    taking_part = [n for n in snapshot.nodes if n not in closed]
    loads = _node_loads(snapshot, cpu, taking_part)
    if not loads:
        return BalancePlan((), (), (), "no node takes part in balancing")
    avg_cpu = sum(x.cpu for x in loads.values()) / sum(x.cpus for x in loads.values())
    avg_mem = sum(x.mem for x in loads.values()) / sum(x.memory for x in loads.values())
    for x in loads.values():
        x.cpu_limit = max(threshold, avg_cpu) * x.cpus
        x.mem_limit = max(threshold, avg_mem) * x.memory
    head = (
        f"{level} level ({_pct(threshold)}; cluster average {_pct(avg_cpu)} CPU, "
        f"{_pct(avg_mem)} memory)"
    )
    over = sorted((n for n, x in loads.items() if x.over()), key=lambda n: _rank_over(loads[n], n))
    if not over:
        return BalancePlan((), (), (), f"every node is within the {head}")
    flights = tuple(in_flight)
    ledger = Ledger(snapshot)
    for f in flights:
        if f.target and f.vm in snapshot.vms:
            ledger.add(f.target, snapshot.vms[f.vm].spec)
    planner = _Planner(snapshot, cpu, loads, ledger, closed, {f.vm for f in flights})
    picked: list[tuple[VMView, str, str, str]] = []
    unresolved = []
    for name in over:
        before = loads[name].fraction()
        why_stuck = planner.relieve(name, picked, head)
        if why_stuck is not None:
            unresolved.append(
                f"{name} stays above the {head} at {_pct(loads[name].fraction())} "
                f"(from {_pct(before)}): {why_stuck}"
            )
    moves = _waves(picked, flights, snapshot.config.migration.max_parallel_per_node)
    summary = (
        f"{len(moves)} live migration(s) relieve {len(over)} node(s) above the {head}: "
        f"{', '.join(over)}"
    )
    if unresolved:
        summary += f"; {len(unresolved)} stay above it"
    return BalancePlan(moves, tuple(over), tuple(unresolved), summary)


def _rank_over(load: _Load, name: str) -> tuple[float, str]:
    cpu, mem = load.excess()
    return (-(cpu / load.cpus + mem / load.memory), name)


class _Planner:
    """The state of one plan: the loads and the ledger as moves are picked."""

    def __init__(
        self,
        snapshot: ClusterSnapshot,
        cpu: CpuUse,
        loads: dict[str, _Load],
        ledger: Ledger,
        closed: Mapping[str, str],
        in_flight: set[str],
    ) -> None:
        self.snapshot, self.cpu, self.loads, self.ledger = snapshot, cpu, loads, ledger
        self.closed, self.in_flight = closed, in_flight
        self.moved: set[str] = set()

    def relieve(
        self, name: str, picked: list[tuple[VMView, str, str, str]], head: str
    ) -> str | None:
        """Pick moves off ``name`` until it is within its limits; why not, if it stays over."""
        load = self.loads[name]
        units, why_none = self._units(name)
        rejections: list[str] = []
        while load.over():
            ex_cpu, ex_mem = load.excess()
            best: tuple[tuple[object, ...], _Unit, str, str] | None = None
            for unit in units:
                if unit.names[0] in self.moved:
                    continue
                gain = min(unit.cpu, ex_cpu) / load.cpus + min(unit.mem, ex_mem) / load.memory
                if gain <= EPS:
                    continue
                found = self._target(unit, name, rejections)
                if found is None:
                    continue
                covers = unit.cpu >= ex_cpu - EPS and unit.mem >= ex_mem - EPS
                size = unit.cpu / load.cpus + unit.mem / load.memory
                penalty = self._penalty(unit, name)
                key: tuple[object, ...] = (
                    (0, len(unit.vms), penalty, size, unit.names)
                    if covers
                    else (1, -gain / len(unit.vms), penalty, unit.names)
                )
                if best is None or key < best[0]:
                    best = (key, unit, found[0], found[1])
            if best is None:
                return _stuck(why_none, rejections)
            _, unit, target, why = best
            was = load.fraction()
            self._apply(unit, name, target)
            for vm in unit.vms:
                with_them = [n for n in unit.names if n != vm.name]
                along = f", with {', '.join(with_them)} (hard affinity)" if with_them else ""
                picked.append(
                    (
                        vm,
                        name,
                        target,
                        f"balance at the {head}: {name} is at {_pct(was)}, above it; move "
                        f"{vm.name} ({self.cpu.vms.get(vm.name, 0.0):.1f} cores, "
                        f"{vm.spec.memory_mib} MiB){along} to {target}: {why}",
                    )
                )
        return None

    def _units(self, name: str) -> tuple[list[_Unit], list[str]]:
        """The VMs on ``name`` that may move, grouped by hard affinity; and why others not."""
        here = [
            v
            for v in self.snapshot.vms.values()
            if v.placement is not None and v.placement.node == name
        ]
        groups = _hard_groups(here)
        units, why_not = [], []
        for group in groups:
            stuck = [why for v in group if (why := self._why_stays(v)) is not None]
            if stuck:
                why_not.extend(stuck)
                continue
            cpu = sum(self.cpu.vms.get(v.name, 0.0) for v in group)
            units.append(_Unit(tuple(group), cpu, float(sum(v.spec.memory_mib for v in group))))
        return units, why_not

    def _why_stays(self, vm: VMView) -> str | None:
        if vm.name in self.in_flight or vm.migrating or vm.moving:
            return f"{vm.name} is moving already"
        if not vm.wants_running or vm.failed_reason or not vm.is_running_as_placed:
            return f"{vm.name} is not running where it is placed"
        return None

    def _target(self, unit: _Unit, source: str, rejections: list[str]) -> tuple[str, str] | None:
        """The best node for ``unit`` and why it, or None (the reasons in ``rejections``)."""
        fits: list[tuple[int, int, int, float, str]] = []
        blocked = {v.name: move_blockers(self.snapshot, v, source) for v in unit.vms}
        for name, load in self.loads.items():
            if name == source:
                continue
            why = self._misfit(unit, source, name, blocked)
            if why is None and (
                load.cpu + unit.cpu > load.cpu_limit + EPS
                or load.mem + unit.mem > load.mem_limit + EPS
            ):
                why = f"{name} would go above the level with {', '.join(unit.names)}"
            if why is not None:
                if len(rejections) < 6:
                    rejections.append(why)
                continue
            residents = list(self.ledger.residents(name))
            soft = sum(fit.conflicts(v.spec, residents).soft for v in unit.vms)
            mates = sum(
                self.ledger.partners(v.spec, self.closed).soft.get(name, 0) for v in unit.vms
            )
            owners = unit.vms[0].spec.ha.preferred_owners
            rank = owners.index(name) if name in owners else len(owners)
            after = max((load.cpu + unit.cpu) / load.cpus, (load.mem + unit.mem) / load.memory)
            fits.append((soft, -mates, rank, after, name))
        if not fits:
            return None
        *_, after, best = min(fits)
        return best, f"{_pct(after)} loaded with it, of {len(fits)} node(s) that fit"

    def _misfit(
        self, unit: _Unit, source: str, name: str, blocked: Mapping[str, Mapping[str, str]]
    ) -> str | None:
        node = self.snapshot.nodes[name].node
        cpus, memory = self.ledger.used_cpus(name), self.ledger.used_memory(name)
        residents = list(self.ledger.residents(name))
        skip = {*self.closed, source}
        for vm in unit.vms:
            spec = vm.spec
            why = (
                fit.not_owner(spec, name)
                or blocked[vm.name].get(name)
                or fit.lacks(spec, node)
                or fit.no_room(spec, node, cpus, memory)
                or fit.hard_conflict(spec, name, residents)
                or fit.apart(spec, name, self.ledger.partners(spec, skip))
            )
            if why is not None:
                return why
            cpus, memory = cpus + spec.vcpus, memory + spec.memory_mib
        return None

    def _penalty(self, unit: _Unit, source: str) -> int:
        """Soft rules a move of ``unit`` breaks (affinity partners left behind) less those
        it mends (anti-affinity conflicts it leaves)."""
        residents = [r for r in self.ledger.residents(source) if r.vm not in unit.names]
        score = 0
        for vm in unit.vms:
            score -= fit.conflicts(vm.spec, residents).soft
            score += self.ledger.partners(vm.spec, self.closed).soft.get(source, 0)
        return score

    def _apply(self, unit: _Unit, source: str, target: str) -> None:
        self.loads[source].cpu -= unit.cpu
        self.loads[source].mem -= unit.mem
        self.loads[target].cpu += unit.cpu
        self.loads[target].mem += unit.mem
        for vm in unit.vms:
            self.ledger.add(target, vm.spec)  # counted on both ends until it is done
            self.moved.add(vm.name)


def _hard_groups(vms: list[VMView]) -> list[list[VMView]]:
    """``vms`` (of one node) split into groups joined by hard affinity, each sorted."""
    parent = {v.name: v.name for v in vms}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, a in enumerate(vms):
        for b in vms[i + 1 :]:
            shared = set(a.spec.ha.affinity_classes) & set(b.spec.ha.affinity_classes)
            if shared and (a.spec.ha.affinity_enforced or b.spec.ha.affinity_enforced):
                parent[root(a.name)] = root(b.name)
    groups: dict[str, list[VMView]] = {}
    for v in vms:
        groups.setdefault(root(v.name), []).append(v)
    return sorted(
        (sorted(g, key=lambda v: v.name) for g in groups.values()), key=lambda g: g[0].name
    )


def _stuck(why_none: list[str], rejections: list[str]) -> str:
    reasons = list(dict.fromkeys(rejections or why_none))  # each said once
    if not reasons:
        return "no VM there can take load off it"
    return "no move fits: " + "; ".join(reasons[:6])


def _waves(
    picked: list[tuple[VMView, str, str, str]], flights: tuple[InFlight, ...], limit: int
) -> tuple[BalanceMove, ...]:
    """Each picked move in the first wave where both its nodes have a free migration slot
    (the migrations under way fill the first)."""
    busy: dict[int, Counter[str]] = {1: Counter()}
    for f in flights:
        busy[1][f.source] += 1
        if f.target:
            busy[1][f.target] += 1
    out = []
    for vm, source, target, reason in picked:
        wave = 1
        while busy.setdefault(wave, Counter())[source] >= limit or busy[wave][target] >= limit:
            wave += 1
        busy[wave][source] += 1
        busy[wave][target] += 1
        out.append(BalanceMove(vm.name, source, target, wave, reason))
    return tuple(out)


__all__ = [
    "BalanceMove",
    "BalancePlan",
    "CpuUse",
    "level_of",
    "load_node",
    "plan_balance",
]
