"""Start-order groups: a VM whose ``start_after`` groups are not all running waits for them,
or until ``start_group_delay_s`` has passed since it became startable (``pending_since``).

A group is running when every VM of that group that wants to run is running where it is
placed, on a live node; a group with no such VM does not hold anyone back. A VM placed
earlier in the same plan is not running yet, so its dependents wait for the next cycles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hvcluster.scheduler.snapshot import ClusterSnapshot, VMView
from hvcluster.scheduler.timefmt import clock, span


@dataclass(frozen=True)
class GroupState:
    running: int
    total: int

    @property
    def up(self) -> bool:
        return self.running == self.total


def group_states(snapshot: ClusterSnapshot) -> Mapping[str, GroupState]:
    """How many VMs of each start group want to run, and how many do (on a live node: a
    status that still says running on a node that is gone does not count)."""
    counts: dict[str, tuple[int, int]] = {}
    for vm in snapshot.vms.values():
        group = vm.spec.ha.start_group
        if not group or not vm.wants_running:
            continue
        running, total = counts.get(group, (0, 0))
        on = snapshot.nodes.get(vm.placement.node) if vm.placement else None
        up = vm.is_running_as_placed and on is not None and on.alive
        counts[group] = (running + up, total + 1)
    return {g: GroupState(r, t) for g, (r, t) in counts.items()}


@dataclass(frozen=True)
class Gate:
    """``open``: the VM may start now; else it waits ``until``. ``note`` says why;
    ``on`` and ``cause``: what it waits on, said alike for every VM waiting on the same."""

    open: bool
    until: float | None
    note: str
    on: str = ""
    cause: str = ""


def start_gate(vm: VMView, snapshot: ClusterSnapshot, groups: Mapping[str, GroupState]) -> Gate:
    after = vm.spec.ha.start_after
    if not after:
        return Gate(True, None, "")
    waiting = [g for g in after if not groups.get(g, GroupState(0, 0)).up]
    if not waiting:
        return Gate(True, None, f"start group(s) {', '.join(after)} running")
    delay = snapshot.config.start_group_delay_s
    since = snapshot.now if vm.pending_since is None else vm.pending_since
    deadline = since + delay
    detail = ", ".join(
        f"{g} ({groups[g].running}/{groups[g].total} running)" if g in groups else g
        for g in waiting
    )
    if snapshot.now >= deadline:
        return Gate(
            True,
            None,
            f"start_group_delay_s {span(delay)} passed at {clock(deadline)} "
            f"without start group(s) {detail} up",
        )
    return Gate(
        False,
        deadline,
        f"{vm.name} waits for start group(s) {detail} to be running, at most until "
        f"{clock(deadline)} (start_group_delay_s {span(delay)} after it became startable "
        f"at {clock(since)})",
        f"group/{','.join(waiting)}",
        f"start group(s) {detail} not running yet; each starts once they are, or "
        f"start_group_delay_s {span(delay)} after it became startable",
    )
