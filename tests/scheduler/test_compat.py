"""Live migration only between nodes whose guests see the same CPU (same driver,
accelerator, guest CPU model, and a target that can provide it): the rule, and how drain
and failback honour it."""

from __future__ import annotations

from typing import Any

from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.models.migration import MigrationKind
from hvcluster.models.vm import Failback, FailbackMode
from hvcluster.scheduler import Failback as FailbackDecision
from hvcluster.scheduler import NodeView, plan
from hvcluster.scheduler.compat import live_blocker, live_blockers
from hvcluster.scheduler.drain import DrainMove, DrainStay, plan_drain
from tests.scheduler.factory import node, of, snap, vm

DRAINING = NodeAdminState.DRAINING


def cpu(
    name: str, model: str = "qemu64", *, admin: NodeAdminState = NodeAdminState.UP, **inv: Any
) -> NodeView:
    plain = node(name, admin=admin)
    inventory = plain.node.inventory.model_copy(update={"guest_cpu_model": model, **inv})
    return NodeView(plain.node.model_copy(update={"inventory": inventory}), alive=True)


def test_the_rule() -> None:
    a, same, other = cpu("a").node, cpu("b").node, cpu("c", "EPYC").node
    assert live_blocker(a, same) is None
    why = live_blocker(a, other)
    assert why == (
        "guests see CPU qemu64 on a and EPYC on c: live migration impossible (use quick migration)"
    )
    kvm = cpu("d", accelerator="kvm").node
    assert "runs guests with tcg and d with kvm" in (live_blocker(a, kvm) or "")
    lacking = cpu("e", guest_cpu_problem="it lacks avx2").node
    assert live_blocker(a, lacking) == "e cannot give guests CPU qemu64: it lacks avx2"
    assert live_blocker(lacking, a) is None  # it is the target that must provide it
    # An agent that reported no guest CPU gave qemu64 (the qemu driver's default).
    assert live_blocker(node("old").node, a) is None


def test_blockers_only_for_a_live_move() -> None:
    s = snap([cpu("n1"), cpu("n2"), cpu("n3", "EPYC")])
    assert set(live_blockers(s, "n1")) == {"n3"}
    assert live_blockers(s, "n1", MigrationKind.QUICK) == {}


def test_drain_moves_live_where_it_can() -> None:
    s = snap([cpu("n1", admin=DRAINING), cpu("n2", "EPYC"), cpu("n3")], [vm("a", on="n1")])
    (move,) = of(plan_drain(s, []), DrainMove)
    assert (move.target, move.kind) == ("n3", MigrationKind.LIVE)


def test_drain_falls_back_to_quick_when_only_another_cpu_model_fits() -> None:
    s = snap([cpu("n1", admin=DRAINING), cpu("n2", "EPYC")], [vm("a", on="n1")])
    (move,) = of(plan_drain(s, []), DrainMove)
    assert (move.target, move.kind) == ("n2", MigrationKind.QUICK)
    assert "by quick migration (guests see CPU qemu64 on n1 and EPYC on n2" in move.reason


def test_drain_stays_when_the_fallback_is_to_stay() -> None:
    s = snap(
        [cpu("n1", admin=DRAINING), cpu("n2", "EPYC")],
        [vm("a", on="n1")],
        migration={"drain_fallback": "stay"},
    )
    (stay,) = of(plan_drain(s, []), DrainStay)
    assert "live migration impossible" in stay.reason


def test_failback_between_cpu_models_is_a_cold_move() -> None:
    immediate = Failback(mode=FailbackMode.IMMEDIATE)
    away = vm("web", on="n2", preferred=("n1",), failback=immediate)
    (d,) = of(plan(snap([cpu("n1", "EPYC"), cpu("n2")], [away])), FailbackDecision)
    assert not d.live and "as a cold move: guests see CPU qemu64 on n2 and EPYC on n1" in d.reason
    (d,) = of(plan(snap([cpu("n1"), cpu("n2")], [away])), FailbackDecision)
    assert d.live and "cold" not in d.reason
