"""Drain planning: where each VM of a draining node goes, how, how many at once."""

from __future__ import annotations

from hvcluster.models.lifecycle import NodeAdminState, VMState
from hvcluster.models.migration import MigrationKind
from hvcluster.models.vm import Priority
from hvcluster.scheduler.drain import DrainDone, DrainMove, DrainStay, InFlight, plan_drain
from tests.scheduler.factory import node, snap, vm

DRAINING = NodeAdminState.DRAINING


def test_at_most_the_limit_at_once_high_priority_first() -> None:
    s = snap(
        [node("n1", admin=DRAINING), node("n2"), node("n3")],
        [
            vm("a", on="n1"),
            vm("b", on="n1"),
            vm("c", on="n1", priority=Priority.HIGH),
            vm("d", on="n1"),
        ],
        migration={"max_parallel_per_node": 2},
    )
    moves = plan_drain(s, [])
    assert [(m.vm, m.kind) for m in moves if isinstance(m, DrainMove)] == [
        ("c", MigrationKind.LIVE),
        ("a", MigrationKind.LIVE),
    ]
    assert not [d for d in moves if isinstance(d, DrainDone)]
    # with two in flight, nothing more starts
    busy = [InFlight("c", "n1", "n2"), InFlight("a", "n1", "n3")]
    assert plan_drain(s, busy) == ()


def test_owners_anti_affinity_and_capacity_are_respected() -> None:
    s = snap(
        [node("n1", admin=DRAINING), node("n2"), node("n3", memory=1024)],
        [
            vm("pinned", on="n1", possible=("n1",)),
            vm("db-1", on="n1", classes=("db",), enforced=True),
            vm("db-2", on="n2", classes=("db",), enforced=True),
            vm("huge", on="n1", memory=2048),
        ],
        migration={"max_parallel_per_node": 5},
    )
    out = plan_drain(s, [])
    moves = {d.vm: d.target for d in out if isinstance(d, DrainMove)}
    stays = {d.vm: d.reason for d in out if isinstance(d, DrainStay)}
    assert moves == {"db-1": "n3", "huge": "n2"}
    assert "not a possible owner" in stays["pinned"]


def test_failed_live_falls_back_to_quick_or_stays_per_policy_and_done_pauses() -> None:
    nodes = [node("n1", admin=DRAINING, volumes=("csv",)), node("n2", volumes=("csv",))]
    vms = [vm("a", on="n1"), vm("broken", on="n1", state=VMState.FAILED, last_error="boom")]
    quick = plan_drain(snap(nodes, vms), [], failed_live={"a": "cpu mismatch"})
    assert [(d.vm, d.kind) for d in quick if isinstance(d, DrainMove)] == [
        ("a", MigrationKind.QUICK)
    ]
    stay = plan_drain(
        snap(nodes, vms, migration={"drain_fallback": "stay"}), [], failed_live={"a": "x"}
    )
    assert {d.vm for d in stay if isinstance(d, DrainStay)} == {"a", "broken"}
    done = [d for d in stay if isinstance(d, DrainDone)]
    assert done and done[0].stayed == ("a", "broken")
    empty = plan_drain(snap(nodes, [vm("z", on="n2")]), [])
    assert [d.node for d in empty if isinstance(d, DrainDone)] == ["n1"]


def test_quick_fallback_needs_a_volume_both_nodes_see_for_the_state() -> None:
    """The saved state must be where the target can read it: no shared volume, no quick
    migration; the drain leaves the VM and says why."""
    apart = [node("n1", admin=DRAINING, volumes=("a",)), node("n2", volumes=("b",))]
    out = plan_drain(snap(apart, [vm("a", on="n1")]), [], failed_live={"a": "cpu mismatch"})
    assert not [d for d in out if isinstance(d, DrainMove)]
    (stay,) = [d for d in out if isinstance(d, DrainStay)]
    assert "n1 and n2 share no volume to save the VM's state on" in stay.reason
    # the VM's own disk volume is chosen when both see it, else any volume both see
    shared = [node("n1", admin=DRAINING, volumes=("a", "b")), node("n2", volumes=("a", "b"))]
    moves = plan_drain(snap(shared, [vm("a", on="n1")]), [], failed_live={"a": "x"})
    assert [(d.vm, d.kind) for d in moves if isinstance(d, DrainMove)] == [
        ("a", MigrationKind.QUICK)
    ]
