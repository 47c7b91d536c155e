"""Which VMs need a node this cycle, and which must wait, stop or stay failed.

Every VM is sorted into one of:

- desired stopped but placed: :class:`Unplace`;
- left failed earlier (``failed_reason``): left alone;
- placed on a live node and not failed there: nothing to do here (failback looks at it);
- placed on a node that is gone but may still run it: :class:`Wait` until the node must have
  fenced itself;
- placed on a dead node, or failed on its (live) node after its local restarts: a *recovery*
  need, unless its priority is ``no_auto_start`` or it failed over more than
  ``failover_threshold`` times within ``failover_period_s``: :class:`LeaveFailed`;
- not placed and wanting to run: a *new* need.

A VM is never given a new node while a node that may still run it is not known dead: its
placement's node, and the node whose agent last reported it active.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from hvcluster.models.lifecycle import VMState
from hvcluster.models.vm import Priority
from hvcluster.scheduler.decisions import (
    Decision,
    LeaveFailed,
    Unplace,
    Wait,
    node_subject,
    vm_subject,
)
from hvcluster.scheduler.liveness import Liveness, NodeHealth
from hvcluster.scheduler.snapshot import ClusterSnapshot, VMView
from hvcluster.scheduler.timefmt import span


class NeedKind(StrEnum):
    RECOVER = "recover"  # its node is dead
    RESTART = "restart"  # it failed on its live node: start it on another
    NEW = "new"  # not placed


@dataclass(frozen=True)
class Need:
    """A VM that needs a node. ``cause`` says why (for recoveries: why its node is dead)."""

    vm: VMView
    kind: NeedKind
    from_node: str | None
    cause: str

    @property
    def order(self) -> tuple[int, int, str]:
        """Recovery order: priority, then recoveries before new VMs, then name."""
        return (self.vm.spec.ha.priority.rank, self.kind is NeedKind.NEW, self.vm.name)


@dataclass(frozen=True)
class Triage:
    needs: tuple[Need, ...]
    decisions: tuple[Decision, ...]


def triage(snapshot: ClusterSnapshot, health: Mapping[str, NodeHealth]) -> Triage:
    """Sort every VM of the snapshot; ``needs`` come back in recovery order."""
    needs: list[Need] = []
    decisions: list[Decision] = []
    for vm in snapshot.vms.values():
        outcome = _triage_one(vm, snapshot, health)
        if isinstance(outcome, Need):
            needs.append(outcome)
        elif outcome is not None:
            decisions.append(outcome)
    needs.sort(key=lambda n: n.order)
    return Triage(tuple(needs), tuple(decisions))


def _triage_one(
    vm: VMView, snapshot: ClusterSnapshot, health: Mapping[str, NodeHealth]
) -> Need | Decision | None:
    name, placement = vm.name, vm.placement
    if not vm.wants_running:
        if placement is None:
            return None
        return Unplace(
            name,
            f"{name} is desired stopped: removing its placement on "
            f"{placement.node}, whose agent then stops it",
        )
    if vm.failed_reason:
        return None
    if placement is None:
        blocked = _may_run_elsewhere(vm, health, skip=None)
        return blocked or Need(vm, NeedKind.NEW, None, f"{name} wants to run and is not placed")
    where = health.get(placement.node)
    if where is None:
        return Wait(
            vm_subject(name),
            None,
            f"{name} is placed on {placement.node}, a node the cluster does not know: "
            "not moving it until that node is known dead",
        )
    if where.liveness is Liveness.SUSPECT:
        return Wait(
            vm_subject(name),
            where.reclaim_at,
            f"{name} stays put for now: {where.why}",
            node_subject(placement.node),
            where.why,
        )
    if where.liveness is Liveness.ALIVE:
        status = vm.status
        failed_here = (
            status is not None
            and status.state is VMState.FAILED
            and status.node == placement.node
            and status.epoch == placement.epoch
        )
        if not failed_here or status is None:
            return None
        error = status.last_error or "no error reported"
        cause = f"{name} failed on {placement.node} after its local restarts ({error})"
        return _gatekeep(Need(vm, NeedKind.RESTART, placement.node, cause), snapshot)
    blocked = _may_run_elsewhere(vm, health, skip=placement.node)
    if blocked is not None:
        return blocked
    return _gatekeep(Need(vm, NeedKind.RECOVER, placement.node, where.why), snapshot)


def _may_run_elsewhere(
    vm: VMView, health: Mapping[str, NodeHealth], skip: str | None
) -> Wait | None:
    """A Wait if the node whose agent last reported ``vm`` active may still be running it."""
    node = vm.active_on
    if node is None or node == skip or vm.status is None:
        return None
    state, name, subject = vm.status.state.value, vm.name, vm_subject(vm.name)
    there = health.get(node)
    if there is None:
        return Wait(
            subject,
            None,
            f"{name} is reported {state} on {node}, a node the cluster does not know: "
            "not starting it elsewhere",
        )
    if there.liveness is Liveness.ALIVE:
        return Wait(
            subject,
            None,
            f"{name} is still reported {state} on {node}: waiting for it to stop there "
            "before starting it elsewhere",
        )
    if there.liveness is Liveness.SUSPECT:
        return Wait(
            subject,
            there.reclaim_at,
            f"{name} was last reported {state}: {there.why}",
            node_subject(node),
            there.why,
        )
    return None


def recent_failovers(vm: VMView, now: float) -> int:
    period = vm.spec.ha.failover_period_s
    return sum(1 for t in vm.failovers if now - period < t <= now)


def _gatekeep(need: Need, snapshot: ClusterSnapshot) -> Need | LeaveFailed:
    """Refuse the recovery when the VM's policy says so."""
    vm, ha = need.vm, need.vm.spec.ha
    name = vm.name
    if ha.priority is Priority.NO_AUTO_START:
        return LeaveFailed(
            name,
            f"{name} has priority no_auto_start, so it is not restarted automatically: "
            f"{need.cause}; start it again to run it",
        )
    recent = recent_failovers(vm, snapshot.now)
    if recent + 1 > ha.failover_threshold:
        return LeaveFailed(
            name,
            f"{name} was failed over {recent} time(s) in the last "
            f"{span(ha.failover_period_s)} and its failover_threshold is "
            f"{ha.failover_threshold}: left failed instead of moving it ({need.cause}); "
            "start it again to retry",
        )
    return need
