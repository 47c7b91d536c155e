"""Draining a node: which of its VMs move where, how, and how many at once. Pure.

For every node whose admin state is ``draining``, its VMs (placed there), in priority order
(high first) then by name:

* a VM with a migration under way is counted, nothing more;
* a VM that is not running where it is placed (starting, stopping) is waited for;
* a VM left failed there stays (:class:`DrainStay`), with that reason;
* a VM whose live migration off this node failed during the drain moves by quick migration
  when the policy (``migration.drain_fallback``) says ``quick``, else stays; one whose quick
  migration failed too, or whose move an administrator cancelled, stays;
* the others move live (:class:`DrainMove`) to the best open node (alive, up; possible
  owners, capacity, hard anti-affinity, as for any placement; and one a live migration can
  reach: same driver and accelerator, and able to provide the CPU model the VM runs with,
  see :mod:`.compat`), or stay when none fits. When only nodes a live migration cannot
  reach fit, the drain fallback decides again: ``quick`` moves it by quick migration to a
  node that can take its saved state (same driver, its CPU model), ``stay`` keeps it.

At most ``migration.max_parallel_per_node`` migrations run at once per node, counting a node
as source or target. A node with nothing left to move and nothing moving ends the drain
(:class:`DrainDone`); the controller then pauses it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hvcluster.models.lifecycle import NodeAdminState, VMState
from hvcluster.models.migration import MigrationKind
from hvcluster.scheduler.compat import move_blockers
from hvcluster.scheduler.placement import Choice, Ledger, choose_node
from hvcluster.scheduler.snapshot import ClusterSnapshot, VMView


@dataclass(frozen=True)
class InFlight:
    """A migration under way (any reason): it holds a slot on both of its nodes."""

    vm: str
    source: str
    target: str  # "" while the controller has not picked one


@dataclass(frozen=True)
class DrainMove:
    vm: str
    node: str  # the node being drained
    target: str
    kind: MigrationKind
    reason: str


@dataclass(frozen=True)
class DrainStay:
    vm: str
    node: str
    reason: str


@dataclass(frozen=True)
class DrainDone:
    node: str
    stayed: tuple[str, ...]
    reason: str


DrainDecision = DrainMove | DrainStay | DrainDone


def closed_for_drain(snapshot: ClusterSnapshot) -> dict[str, str]:
    """Nodes that take no migrated VM, with the reason: not alive, not up, or its watchdog
    does not acknowledge feeding."""
    closed = {}
    for node in snapshot.nodes.values():
        if not node.alive:
            closed[node.name] = f"{node.name} is not alive"
        elif node.admin_state is not NodeAdminState.UP:
            closed[node.name] = f"{node.name} is {node.admin_state.value}"
        elif node.watchdog_refusal is not None:
            closed[node.name] = node.watchdog_refusal
    return closed


def plan_drain(
    snapshot: ClusterSnapshot,
    in_flight: Iterable[InFlight],
    failed_live: Mapping[str, str] | None = None,
    stay: Mapping[str, str] | None = None,
) -> tuple[DrainDecision, ...]:
    """The drain decisions of this snapshot.

    ``failed_live``: VM -> why its live migration off its draining node failed (this drain);
    ``stay``: VM -> why it must not be moved again (its quick migration failed, or its move
    was cancelled).
    """
    failed_live = failed_live or {}
    stay = stay or {}
    flights = tuple(in_flight)
    limit = snapshot.config.migration.max_parallel_per_node
    fallback = snapshot.config.migration.drain_fallback
    busy: Counter[str] = Counter()
    moving: set[str] = set()
    ledger = Ledger(snapshot)
    for f in flights:
        busy[f.source] += 1
        moving.add(f.vm)
        if f.target:
            busy[f.target] += 1
            vm = snapshot.vms.get(f.vm)
            if vm is not None:
                ledger.add(f.target, vm.spec)
    closed = closed_for_drain(snapshot)
    out: list[DrainDecision] = []
    for node in snapshot.nodes.values():
        if node.admin_state is not NodeAdminState.DRAINING:
            continue
        name = node.name
        stayed: list[str] = []
        waiting = any(f.source == name or f.target == name for f in flights)
        for vm in _placed_on(snapshot.vms.values(), name):
            if vm.name in moving:
                continue
            why_stay = _why_stay(vm, stay, failed_live, fallback)
            if why_stay is None and not vm.is_running_as_placed:
                waiting = True  # starting or stopping: decide once it settles
                continue
            if why_stay is not None:
                stayed.append(vm.name)
                out.append(DrainStay(vm.name, name, why_stay))
                continue
            kind = MigrationKind.QUICK if vm.name in failed_live else MigrationKind.LIVE
            if busy[name] >= limit:
                waiting = True
                continue
            full = {n: f"{n} runs {limit} migrations already" for n in busy if busy[n] >= limit}
            shut, draining = {**closed, **full}, {name: f"{name} is draining"}
            blocked = move_blockers(snapshot, vm, name, kind)  # CPU model, accelerator
            choice = choose_node(
                vm.spec, snapshot, shut, ledger, {**draining, **blocked}, leaving={name}
            )
            why_quick = "its live migration failed"
            if not isinstance(choice, Choice) and blocked and fallback == "quick":
                no_quick = move_blockers(snapshot, vm, name, MigrationKind.QUICK)
                quick = choose_node(
                    vm.spec, snapshot, shut, ledger, {**draining, **no_quick}, leaving={name}
                )
                if isinstance(quick, Choice):
                    choice, kind, why_quick = quick, MigrationKind.QUICK, blocked[quick.node]
            if not isinstance(choice, Choice):
                if full:
                    waiting = True  # a busy node may take it once its migrations end
                    continue
                stayed.append(vm.name)
                out.append(DrainStay(vm.name, name, f"{vm.name} stays on {name}: {choice.why}"))
                continue
            ledger.add(choice.node, vm.spec)
            busy[name] += 1
            busy[choice.node] += 1
            waiting = True
            how = (
                f"quick migration ({why_quick})"
                if kind is MigrationKind.QUICK
                else "live migration"
            )
            out.append(
                DrainMove(
                    vm.name,
                    name,
                    choice.node,
                    kind,
                    f"drain {name}: move {vm.name} to {choice.why} by {how}",
                )
            )
        if not waiting:
            text = f"drain of {name} is complete"
            if stayed:
                text += f"; {len(stayed)} VM(s) stayed: {', '.join(sorted(stayed))}"
            out.append(DrainDone(name, tuple(sorted(stayed)), text))
    return tuple(out)


def _placed_on(vms: Iterable[VMView], node: str) -> list[VMView]:
    here = [v for v in vms if v.placement is not None and v.placement.node == node]
    return sorted(here, key=lambda v: (v.spec.ha.priority.rank, v.name))


def _why_stay(
    vm: VMView, stay: Mapping[str, str], failed_live: Mapping[str, str], fallback: str
) -> str | None:
    name = vm.name
    if name in stay:
        return stay[name]
    if vm.status is not None and vm.status.state is VMState.FAILED:
        return f"{name} is failed here: {vm.status.last_error or 'no error reported'}"
    if not vm.wants_running and not vm.is_running_as_placed:
        return f"{name} is not running"
    if name in failed_live and fallback == "stay":
        return f"{name} could not move live ({failed_live[name]}); the drain fallback is to stay"
    return None
