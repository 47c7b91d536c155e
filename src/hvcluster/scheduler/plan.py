"""The scheduler's one entry point: :func:`plan`, a snapshot in, decisions out.

The order of a plan:

1. nodes: the liveness of each (a :class:`Wait` for each gone node not yet safe to reclaim),
   :class:`DeclareDead` for nodes whose VMs are about to be reclaimed, then
   :class:`Quarantine` / :class:`Unquarantine`;
2. VMs, sorted by :mod:`.recovery`: :class:`Unplace` for VMs desired stopped, waits and
   :class:`LeaveFailed` for VMs that must not move;
3. VMs that need a node, in recovery order (priority high, medium, low; recoveries before new
   VMs; then name), each held back by its start-order groups or given the best node
   (:class:`Recover`, :class:`Place`) or, if none fits, :class:`LeaveFailed` with
   ``retry=True``; every placement is counted before the next VM is placed;
4. failbacks of running VMs, with the capacity left.

Pure: the same snapshot always gives the same decisions, in the same order.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from hvcluster.models.fit import not_up
from hvcluster.scheduler.decisions import (
    Decision,
    LeaveFailed,
    Place,
    Quarantine,
    Recover,
    Wait,
    node_subject,
    vm_subject,
)
from hvcluster.scheduler.failback import failback_decisions
from hvcluster.scheduler.liveness import Liveness, NodeHealth, assess
from hvcluster.scheduler.placement import Choice, Ledger, choose_node
from hvcluster.scheduler.quarantine import declare_dead, quarantine_decisions
from hvcluster.scheduler.recovery import Need, NeedKind, triage
from hvcluster.scheduler.snapshot import ClusterSnapshot
from hvcluster.scheduler.startorder import GroupState, group_states, start_gate


def closed_nodes(
    snapshot: ClusterSnapshot, health: Mapping[str, NodeHealth], quarantined: Collection[str]
) -> dict[str, str]:
    """Nodes that take no VMs this cycle, each with the reason."""
    closed: dict[str, str] = {}
    for node in snapshot.nodes.values():
        name = node.name
        liveness = health[name].liveness
        if liveness is not Liveness.ALIVE:
            closed[name] = f"{name} is not alive ({liveness.value})"
        elif name in quarantined:
            closed[name] = f"{name} is being quarantined"
        elif (why := not_up(node.node)) is not None:
            closed[name] = why
        elif node.watchdog_refusal is not None:
            closed[name] = node.watchdog_refusal
    return closed


def plan(snapshot: ClusterSnapshot) -> tuple[Decision, ...]:
    """Every decision for this snapshot, with a reason each. See the module's docstring."""
    health = assess(snapshot)
    out: list[Decision] = [
        Wait(node_subject(h.name), h.reclaim_at, h.why)
        for h in health.values()
        if h.liveness is Liveness.SUSPECT
    ]
    declared = declare_dead(snapshot, health)
    quarantines = quarantine_decisions(snapshot, declared)
    out += declared
    out += quarantines
    closed = closed_nodes(
        snapshot, health, {d.node for d in quarantines if isinstance(d, Quarantine)}
    )
    ledger = Ledger(snapshot)
    sorted_vms = triage(snapshot, health)
    out += sorted_vms.decisions
    groups = group_states(snapshot)
    for need in sorted_vms.needs:
        out.append(_place(need, snapshot, closed, ledger, groups))
    decided = {d.vm for d in out if isinstance(d, Place | Recover | LeaveFailed)}
    decided |= {d.subject.removeprefix("vm/") for d in out if isinstance(d, Wait)}
    out += failback_decisions(snapshot, health, closed, ledger, decided)
    return tuple(out)


def _place(
    need: Need,
    snapshot: ClusterSnapshot,
    closed: Mapping[str, str],
    ledger: Ledger,
    groups: Mapping[str, GroupState],
) -> Decision:
    vm = need.vm
    name, spec = vm.name, vm.spec
    gate = start_gate(vm, snapshot, groups)
    if not gate.open:
        return Wait(vm_subject(name), gate.until, gate.note, gate.on, gate.cause, "wait to start")
    exclude: dict[str, str] = {}
    if need.kind is NeedKind.RESTART and need.from_node is not None:
        exclude[need.from_node] = f"{need.from_node} is where it failed"
    choice = choose_node(spec, snapshot, closed, ledger, exclude)
    if not isinstance(choice, Choice):
        why = choice.why if need.kind is NeedKind.NEW else f"{need.cause}, but {choice.why}"
        return LeaveFailed(name, f"{why}; tried again every cycle", retry=True)
    epoch = vm.next_epoch
    ledger.add(choice.node, spec)
    note = f"; {gate.note}" if gate.note else ""
    if need.kind is NeedKind.NEW or need.from_node is None:
        return Place(
            name,
            choice.node,
            epoch,
            f"place {name} on {choice.node} (epoch {epoch}): {choice.why}{note}",
        )
    return Recover(
        name,
        need.from_node,
        choice.node,
        epoch,
        f"recover {name} from {need.from_node} to {choice.node} (epoch {epoch}): "
        f"{need.cause}; chose {choice.why}{note}",
        from_dead=need.kind is NeedKind.RECOVER,
    )
