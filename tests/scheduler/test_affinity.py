"""Positive affinity (keep these VMs together), hard and soft, in placement, failover,
drain and failback."""

from __future__ import annotations

from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.models.vm import FailbackMode, FailbackPolicy
from hvcluster.scheduler import Failback, LeaveFailed, Place, Recover, plan
from hvcluster.scheduler.drain import DrainMove, DrainStay, plan_drain

from .factory import NOW, node, of, one_for, snap, vm


def test_a_new_vm_joins_its_hard_partner_even_on_a_busier_node() -> None:
    s = snap(
        [node("n1"), node("n2")],
        [
            vm("db", memory=4096, on="n2", together=("app",), together_enforced=True),
            vm("web", together=("app",), state=None),
        ],
    )
    s = snap(s.nodes.values(), [s.vms["db"], vm("web", together=("app",), on=None)])
    d = one_for(plan(s), "web")
    assert isinstance(d, Place) and d.node == "n2"


def test_hard_affinity_refuses_every_other_node_with_the_reason() -> None:
    s = snap(
        [node("n1"), node("n2", memory=1024)],
        [
            vm("db", memory=1024, on="n2", together=("app",)),
            vm("web", memory=1024, together=("app",), together_enforced=True),
        ],
    )
    d = one_for(plan(s), "web")
    assert isinstance(d, LeaveFailed)
    assert "web must run beside db (hard affinity class 'app'), which runs on n2" in d.reason


def test_soft_affinity_prefers_the_partner_s_node_but_gives_way() -> None:
    busy = vm("other", memory=6144, on="n2")
    s = snap(
        [node("n1"), node("n2")],
        [busy, vm("db", memory=1024, on="n2", together=("app",)), vm("web", together=("app",))],
    )
    d = one_for(plan(s), "web")
    assert isinstance(d, Place) and d.node == "n2"  # the busier node: its partner is there
    assert "beside 1 VM(s) it has affinity with" in d.reason
    full = snap(
        [node("n1"), node("n2", memory=1280)],
        [vm("db", memory=1024, on="n2", together=("app",)), vm("web", together=("app",))],
    )
    d = one_for(plan(full), "web")
    assert isinstance(d, Place) and d.node == "n1"


def test_a_dead_node_s_hard_group_fails_over_together() -> None:
    dead = node("n1", alive=False, fenced=True)
    group = [
        vm(f"g{i}", on="n1", together=("app",), together_enforced=True, priority=p)
        for i, p in enumerate(["high", "medium", "low"])
    ]
    s = snap([dead, node("n2"), node("n3")], [vm("x", memory=1024, on="n2"), *group])
    targets = {d.to_node for d in of(plan(s), Recover)}
    assert len(targets) == 1 and len(of(plan(s), Recover)) == 3


def test_a_drain_moves_a_hard_group_to_one_node() -> None:
    nodes = [node("n1", admin=NodeAdminState.DRAINING), node("n2"), node("n3")]
    group = [vm(f"g{i}", on="n1", together=("app",), together_enforced=True) for i in range(2)]
    s = snap(nodes, [vm("x", memory=1024, on="n2"), *group])
    moves = of(plan_drain(s, []), DrainMove)
    assert {m.vm for m in moves} == {"g0", "g1"}
    assert len({m.target for m in moves}) == 1
    assert not of(plan_drain(s, []), DrainStay)


def test_failback_never_leaves_a_hard_partner() -> None:
    fb = FailbackPolicy(mode=FailbackMode.IMMEDIATE)
    vms = [
        vm("a", on="n2", preferred=("n1",), failback=fb, together=("app",)),
        vm("b", on="n2", together=("app",), together_enforced=True),
    ]
    s = snap([node("n1"), node("n2")], vms, now=NOW)
    assert not of(plan(s), Failback)
    vms[1] = vm("b", on="n2", together=("app",))  # soft: it may fail back
    assert of(plan(snap([node("n1"), node("n2")], vms)), Failback)
