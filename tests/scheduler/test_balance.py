"""The balancer's plan on small clusters, case by case (properties: test_balance_properties)."""

from __future__ import annotations

from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.scheduler.balance import CpuUse, plan_balance
from hvcluster.scheduler.drain import InFlight

from .factory import node, snap, vm


def test_a_node_above_the_level_and_the_average_sheds_the_fewest_vms() -> None:
    # n1 holds 7 GiB of 8 (87 %), n2 1 GiB: the low level is 80 %
    s = snap(
        [node("n1"), node("n2")],
        [vm("big", memory=1024, on="n1"), *(vm(f"s{i}", memory=1024, on="n1") for i in range(6))],
    )
    plan = plan_balance(s, CpuUse())
    assert plan.over == ("n1",)
    assert len(plan.moves) == 1
    move = plan.moves[0]
    assert (move.source, move.target, move.wave) == ("n1", "n2", 1)
    assert "n1 is at 88 %" in move.reason and "low level (80 %" in move.reason
    assert not plan.unresolved


def test_one_vm_that_covers_the_excess_beats_two_that_do_not() -> None:
    # n1: 7 GiB used of 8; 0.6 GiB must go: the 1 GiB VM does it alone
    vms = [vm("a", memory=512, on="n1"), vm("b", memory=512, on="n1")]
    vms += [vm("c", memory=1024, on="n1"), vm("d", memory=5120, on="n1")]
    plan = plan_balance(snap([node("n1"), node("n2")], vms), CpuUse())
    assert [m.vm for m in plan.moves] == ["c"]


def test_cpu_use_counts_measured_cores_and_the_host_s_own() -> None:
    s = snap([node("n1"), node("n2")], [vm("hot", on="n1"), vm("cold", on="n1")])
    cpu = CpuUse(other={"n1": 3.0, "n2": 0.5}, vms={"hot": 4.0, "cold": 0.5})
    plan = plan_balance(s, cpu)
    assert [(m.vm, m.target) for m in plan.moves] == [("hot", "n2")]
    assert "4.0 cores" in plan.moves[0].reason


def test_a_balanced_cluster_and_an_evenly_loaded_one_move_nothing() -> None:
    low = snap([node("n1"), node("n2")], [vm("a", memory=4096, on="n1")])
    assert plan_balance(low, CpuUse()).moves == ()
    # both nodes at 90 %: above the level but not above the average: no move helps
    even = snap(
        [node("n1"), node("n2")],
        [vm("a", memory=7372, on="n1"), vm("b", memory=7372, on="n2")],
    )
    plan = plan_balance(even, CpuUse())
    assert plan.moves == () and "within" in plan.reason


def test_the_level_setting_moves_sooner() -> None:
    s = snap(
        [node("n1"), node("n2")],
        [vm("a", memory=3072, on="n1"), vm("b", memory=3072, on="n1")],
    )  # n1 at 75 %
    assert plan_balance(s, CpuUse(), level="low").moves == ()
    assert len(plan_balance(s, CpuUse(), level="medium").moves) == 1
    configured = snap(s.nodes.values(), s.vms.values(), balance={"level": "high"})
    assert len(plan_balance(configured, CpuUse()).moves) == 1


def test_rules_keep_vms_where_they_are_with_the_reason() -> None:
    vms = [
        vm("owned", memory=3584, on="n1", possible=("n1",)),
        vm("dc1", memory=3584, on="n1", classes=("dc",), enforced=True),
        vm("dc2", memory=1024, on="n2", classes=("dc",), enforced=True),
    ]
    plan = plan_balance(snap([node("n1"), node("n2")], vms), CpuUse())
    assert plan.moves == ()
    assert "n2 is not a possible owner of owned" in plan.unresolved[0]
    assert "hard anti-affinity" in plan.unresolved[0]


def test_closed_and_full_nodes_take_nothing() -> None:
    nodes = [node("n1"), node("n2", admin=NodeAdminState.PAUSED), node("n3", alive=False)]
    vms = [vm(f"v{i}", memory=2048, on="n1") for i in range(4)]
    plan = plan_balance(snap(nodes, vms), CpuUse())
    assert plan.moves == () and plan.over == ()  # alone, n1 is the average


def test_a_hard_affinity_group_moves_whole_and_soft_partners_stay_together() -> None:
    vms = [
        vm("web", memory=2048, on="n1", together=("app",), together_enforced=True),
        vm("db", memory=2048, on="n1", together=("app",)),
        vm("x", memory=3072, on="n1"),
    ]
    plan = plan_balance(snap([node("n1"), node("n2"), node("n3", memory=2048)], vms), CpuUse())
    # x alone (3 GiB) covers 7 - 6.4 GiB at one move; the pair would need two
    assert [m.vm for m in plan.moves] == ["x"]
    vms[2] = vm("x", memory=3072, on="n1", possible=("n1",))
    plan = plan_balance(snap([node("n1"), node("n2"), node("n3", memory=2048)], vms), CpuUse())
    assert sorted((m.vm, m.target) for m in plan.moves) == [("db", "n2"), ("web", "n2")]
    assert "with db (hard affinity)" in next(m.reason for m in plan.moves if m.vm == "web")


def test_the_migration_limit_splits_the_plan_into_waves() -> None:
    nodes = [node("n1", memory=16384), node("n2", memory=16384), node("n3", memory=16384)]
    vms = [vm(f"v{i}", memory=2048, on="n1") for i in range(8)]  # n1 full, the others empty
    flights = [InFlight("other", "n2", "n3")]
    plan = plan_balance(snap(nodes, vms), CpuUse(), flights, level="high")
    assert len(plan.moves) == 4  # 16 GiB used of 16: at most 60 % may stay, 8 GiB
    waves: dict[int, list[str]] = {}
    for m in plan.moves:
        waves.setdefault(m.wave, []).append(m.vm)
    assert len(waves[1]) == 2  # n1 runs 2 at once (the default limit)
    for w, names in waves.items():
        moves = [m for m in plan.moves if m.wave == w]
        for n in ("n1", "n2", "n3"):
            count = sum(m.source == n or m.target == n for m in moves)
            count += sum(w == 1 and n in (f.source, f.target) for f in flights)
            assert count <= 2, (w, n, names)
