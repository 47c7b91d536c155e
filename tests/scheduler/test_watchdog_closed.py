"""A node whose watchdog does not acknowledge feeding starts no VM (its agent refuses): the
scheduler places nothing there, and says why."""

from __future__ import annotations

from dataclasses import replace

from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.models.node import WatchdogReport
from hvcluster.scheduler import LeaveFailed, Place, plan
from hvcluster.scheduler.drain import DrainMove, DrainStay, plan_drain
from hvcluster.scheduler.snapshot import NodeView

from .factory import node, one_for, snap, vm


def _watchdog(view: NodeView, acknowledging: bool, problem: str = "") -> NodeView:
    report = WatchdogReport(acknowledging=acknowledging, since=1.0, problem=problem)
    return replace(view, node=view.node.model_copy(update={"watchdog": report}))


def test_no_vm_is_placed_where_the_watchdog_does_not_acknowledge() -> None:
    silent = _watchdog(node("n1", cpus=16), False, "no watchdog listens at /run/hvc")
    d = plan(snap([silent, _watchdog(node("n2", cpus=1), True)], [vm("a"), vm("b")]))
    a = one_for(d, "a")
    assert isinstance(a, Place) and a.node == "n2"
    b = one_for(d, "b")
    assert isinstance(b, LeaveFailed)
    assert "n1's watchdog does not acknowledge feeding (no watchdog listens" in b.reason


def test_a_drain_moves_nothing_to_a_node_whose_watchdog_is_silent() -> None:
    s = snap(
        [
            node("n1", admin=NodeAdminState.DRAINING),
            _watchdog(node("n2", cpus=64), False, "the watchdog at /run/hvc does not answer"),
            node("n3", cpus=2),
        ],
        [vm("a", 2, on="n1"), vm("b", 2, on="n1")],
        migration={"max_parallel_per_node": 5},
    )
    out = plan_drain(s, [])
    assert {d.vm: d.target for d in out if isinstance(d, DrainMove)} == {"a": "n3"}
    (stay,) = [d for d in out if isinstance(d, DrainStay)]
    assert "n2's watchdog does not acknowledge feeding" in stay.reason
