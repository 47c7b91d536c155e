"""Declaring nodes dead, and quarantining those that die too often.

A node is *declared dead* (:class:`DeclareDead`, once per outage) when it is dead in the
sense of :mod:`.liveness`: its VMs may be reclaimed. The controller records the snapshot's
``now`` in the node's failure history; an outage counts as recorded once a failure at or
after its ``gone_since`` is. A caveat: a new leader restarts ``gone_since`` for a node that
is still gone when it takes over, so a node that stays dead across a change of leader is
declared dead once more.

A node declared dead ``quarantine.threshold`` times within ``quarantine.period_s`` is
quarantined (WSFC's defaults: 3 times in an hour, for 2 hours): :class:`Quarantine` until
``now + duration_s`` (a draining node once its drain has ended). An expired quarantine is
lifted (:class:`Unquarantine`). Failures from before the start of the node's last
quarantine are not counted again, nor those before an admin ended a quarantine early
(``failures_forgiven_at``).
"""

from __future__ import annotations

from collections.abc import Mapping

from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.scheduler.decisions import (
    Decision,
    DeclareDead,
    Quarantine,
    Unquarantine,
    named,
)
from hvcluster.scheduler.liveness import Liveness, NodeHealth
from hvcluster.scheduler.snapshot import ClusterSnapshot, NodeView
from hvcluster.scheduler.timefmt import clock, span, stamp


def hosted_vms(snapshot: ClusterSnapshot) -> Mapping[str, tuple[str, ...]]:
    """For every node, the VMs placed on it or reported active on it (VMs left failed
    aside: nothing of theirs is reclaimed)."""
    found: dict[str, list[str]] = {}
    for vm in snapshot.vms.values():
        if vm.failed_reason:
            continue
        for node in vm.hosts():
            found.setdefault(node, []).append(vm.name)
    return {node: tuple(sorted(vms)) for node, vms in found.items()}


def declare_dead(
    snapshot: ClusterSnapshot, health: Mapping[str, NodeHealth]
) -> tuple[DeclareDead, ...]:
    hosted = hosted_vms(snapshot)
    out = []
    for node in snapshot.nodes.values():
        h = health[node.name]
        if h.liveness is not Liveness.DEAD or h.gone_since is None:
            continue
        if any(t >= h.gone_since for t in node.failures):
            continue  # this outage is already recorded
        vms = hosted.get(node.name, ())
        held = f"its VMs {named(vms)} may move" if vms else "it held no VMs"
        out.append(DeclareDead(node.name, h.gone_since, f"{h.why}: declared dead; {held}"))
    return tuple(out)


def counted_failures(node: NodeView, snapshot: ClusterSnapshot, extra: float | None) -> int:
    q = snapshot.config.quarantine
    now = snapshot.now
    floor = now - q.period_s
    if node.quarantined_until is not None:
        floor = max(floor, node.quarantined_until - q.duration_s)
    if node.node.failures_forgiven_at is not None:  # an admin cleared a quarantine
        floor = max(floor, node.node.failures_forgiven_at)
    times = [*node.failures, *([] if extra is None else [extra])]
    return sum(1 for t in times if floor < t <= now)


def quarantine_decisions(
    snapshot: ClusterSnapshot, declared: tuple[DeclareDead, ...]
) -> tuple[Decision, ...]:
    """Quarantine and Unquarantine decisions; ``declared`` counts as recorded at ``now``."""
    q, now = snapshot.config.quarantine, snapshot.now
    new = {d.node for d in declared}
    out: list[Decision] = []
    for node in snapshot.nodes.values():
        name = node.name
        if node.admin_state is NodeAdminState.QUARANTINED:
            until = node.quarantined_until
            if until is not None and now >= until:
                out.append(Unquarantine(name, f"{name}'s quarantine ended at {stamp(until)}"))
            continue
        if node.admin_state is NodeAdminState.DRAINING:
            continue  # draining -> quarantined is not a move: wait for it to end paused
        count = counted_failures(node, snapshot, now if name in new else None)
        if count >= q.threshold:
            until = now + q.duration_s
            out.append(
                Quarantine(
                    name,
                    until,
                    f"{name} was declared dead {count} time(s) within {span(q.period_s)} "
                    f"(quarantine threshold {q.threshold}): no placements on it for "
                    f"{span(q.duration_s)}, until {stamp(until)} (decided at {clock(now)})",
                )
            )
    return tuple(out)
