"""Failback: a running VM goes back to a more preferred owner when one can take it.

A VM running where it is placed, on a node that is not its first preferred owner, fails back
to the most preferred owner ranked above its current node that is open (alive, up), fits it
(capacity, hard anti-affinity) and would not add soft anti-affinity conflicts. The VM's
``failback.mode`` says when: ``never``; ``immediate``; ``window``: only while the hour of
``now`` is in ``[window_start_hour, window_end_hour)``, in UTC (a window whose end is not after
its start crosses midnight). Outside the window it is a :class:`Wait` until the window opens.
The controller carries a :class:`Failback` out as a live migration, or as a cold move when
the two nodes cannot migrate live between them (:mod:`.compat`).

A node resumed with ``failback none`` holds back the VMs that were away from it then
(``Node.failback_held``: VM -> its placement epoch at the resume): such a VM does not fail
back to that node while it is still at that epoch, whatever its own policy says. When that
hold is all that keeps it from failing back, it is a :class:`Wait` (said once) naming it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from hvcluster.models.fit import apart, conflicts, not_owner
from hvcluster.models.vm import FailbackMode
from hvcluster.scheduler.compat import move_blocker, vm_model
from hvcluster.scheduler.decisions import Decision, Failback, Wait, vm_subject
from hvcluster.scheduler.liveness import Liveness, NodeHealth
from hvcluster.scheduler.placement import Ledger, misfit
from hvcluster.scheduler.snapshot import ClusterSnapshot, VMView
from hvcluster.scheduler.timefmt import clock, in_hour_window, next_hour_start


def _rank_text(vm: VMView, node: str) -> str:
    preferred = vm.spec.ha.preferred_owners
    if node in preferred:
        return f"preferred owner #{preferred.index(node) + 1}"
    return "not a preferred owner"


def held(vm: VMView, snapshot: ClusterSnapshot, node: str) -> bool:
    """``node`` was resumed with ``failback none`` while ``vm`` was away at its present
    placement epoch: it does not fail back there (until it next moves)."""
    found = snapshot.nodes.get(node)
    if found is None or vm.placement is None:
        return False
    return found.node.failback_held.get(vm.name) == vm.placement.epoch


def _target(
    vm: VMView, snapshot: ClusterSnapshot, closed: Mapping[str, str], ledger: Ledger
) -> tuple[str | None, str | None]:
    """The most preferred owner above the VM's current node that can take it, if any; and
    the first one that could but holds it back (resumed with ``failback none``)."""
    assert vm.placement is not None
    spec, current = vm.spec, vm.placement.node
    preferred = spec.ha.preferred_owners
    above = preferred[: preferred.index(current)] if current in preferred else preferred
    soft_here = conflicts(spec, ledger.classmates(current, spec)).soft
    holder: str | None = None
    for name in above:
        node = snapshot.nodes.get(name)
        if node is None or name in closed:
            continue
        if not_owner(spec, name) is not None or misfit(spec, node, ledger) is not None:
            continue
        if apart(spec, name, ledger.partners(spec, closed)) is not None:
            continue  # it would leave a VM it must run beside
        if conflicts(spec, ledger.classmates(name, spec)).soft > soft_here:
            continue
        if held(vm, snapshot, name):
            holder = holder or name
            continue
        return name, holder
    return None, holder


def failback_decisions(
    snapshot: ClusterSnapshot,
    health: Mapping[str, NodeHealth],
    closed: Mapping[str, str],
    ledger: Ledger,
    decided: Collection[str],
) -> tuple[Decision, ...]:
    """Failbacks (reserved in ``ledger`` as they are decided) and window Waits, in priority
    order. VMs in ``decided`` already have a decision this plan and are skipped."""
    out: list[Decision] = []
    vms = sorted(snapshot.vms.values(), key=lambda v: (v.spec.ha.priority.rank, v.name))
    for vm in vms:
        fb = vm.spec.ha.failback
        if fb.mode is FailbackMode.NEVER or not vm.spec.ha.preferred_owners:
            continue
        if vm.name in decided or vm.failed_reason or not vm.wants_running:
            continue
        if not vm.is_running_as_placed or vm.placement is None or vm.moving or vm.migrating:
            continue  # not running where placed, or already being moved
        current = vm.placement.node
        here = health.get(current)
        if here is None or here.liveness is not Liveness.ALIVE:
            continue
        target, holder = _target(vm, snapshot, closed, ledger)
        if target is None:
            if holder is not None:
                out.append(
                    Wait(
                        vm_subject(vm.name),
                        None,
                        f"{vm.name} stays on {current}: {holder} "
                        f"({_rank_text(vm, holder)}) was resumed with failback none while "
                        f"{vm.name} was away, so it does not fail back there (its own "
                        f"failback policy, {fb.mode.value}, would) until it next moves",
                    )
                )
            continue
        what = (
            f"it runs on {current} ({_rank_text(vm, current)}) and {target} "
            f"({_rank_text(vm, target)}) is up and fits it"
        )
        if fb.mode is FailbackMode.WINDOW:
            window = f"{fb.window_start_hour:02d}:00-{fb.window_end_hour:02d}:00 UTC"
            if not in_hour_window(snapshot.now, fb.window_start_hour, fb.window_end_hour):
                opens = next_hour_start(snapshot.now, fb.window_start_hour)
                out.append(
                    Wait(
                        vm_subject(vm.name),
                        opens,
                        f"{vm.name} may fail back from {current} to {target}: {what}; "
                        f"it waits for its failback window {window}, which opens at "
                        f"{clock(opens)}",
                    )
                )
                continue
            how = f"failback window {window} is open"
        else:
            how = "failback is immediate"
        ledger.add(target, vm.spec)
        blocker = move_blocker(
            vm_model(snapshot, vm), snapshot.nodes[current].node, snapshot.nodes[target].node
        )
        cold = f"; as a cold move: {blocker}" if blocker else ""
        out.append(
            Failback(
                vm.name,
                current,
                target,
                f"fail back {vm.name} from {current} to {target}: {what}; {how}{cold}",
                live=blocker is None,
            )
        )
    return tuple(out)
