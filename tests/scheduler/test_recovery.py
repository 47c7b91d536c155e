"""Recovery of a dead node's VMs: waiting for fencing, mass failure, order, policy."""

from __future__ import annotations

from hvcluster.models.lifecycle import VMState
from hvcluster.models.vm import Priority
from hvcluster.scheduler import DeclareDead, LeaveFailed, NodeView, Place, Recover, Wait, plan

from .factory import NOW, for_vm, node, of, one_for, snap, vm

# default timings: fence_after 3 s + margin 1.5 s
DEADLINE = 4.5


def dead_n1(gone_for: float, fenced: bool = False) -> list[NodeView]:
    n1 = node("n1", alive=False, gone_since=NOW - gone_for, fenced=fenced)
    return [n1, node("n2"), node("n3")]


def test_waits_until_fence_after_plus_margin() -> None:
    s = snap(dead_n1(4.4), [vm("web", on="n1")])
    d = plan(s)
    w = one_for(d, "web")
    assert isinstance(w, Wait)
    assert w.until == NOW - 4.4 + DEADLINE
    assert "it may still run its VMs until" in w.reason
    assert "fence_after 3s + margin 1.5s" in w.reason
    node_wait = [x for x in d if x.subject == "node/n1"]
    assert len(node_wait) == 1 and isinstance(node_wait[0], Wait)
    assert not of(d, Recover) and not of(d, DeclareDead)


def test_recovers_once_fence_after_plus_margin_passed() -> None:
    s = snap(dead_n1(DEADLINE), [vm("web", on="n1", epoch=4)])
    d = plan(s)
    r = one_for(d, "web")
    assert isinstance(r, Recover)
    assert (r.from_node, r.to_node, r.epoch, r.from_dead) == ("n1", "n2", 5, True)
    assert r.reason.startswith("recover web from n1 to n2 (epoch 5): n1's alive key")
    assert "passed at" in r.reason
    dead = of(d, DeclareDead)
    assert [x.node for x in dead] == ["n1"]


def test_recovers_at_once_when_fenced() -> None:
    s = snap(dead_n1(0.1, fenced=True), [vm("web", on="n1")])
    r = one_for(plan(s), "web")
    assert isinstance(r, Recover)
    assert "fence agent confirmed" in r.reason


def test_gone_since_unknown_counts_from_now() -> None:
    nodes = [node("n1", alive=True), node("n2")]
    from dataclasses import replace

    nodes[0] = replace(nodes[0], alive=False, gone_since=None)
    w = one_for(plan(snap(nodes, [vm("web", on="n1")])), "web")
    assert isinstance(w, Wait)
    assert w.until == NOW + DEADLINE


def test_mass_failure_waits_for_grace() -> None:
    nodes = [
        node("n1", alive=False, gone_since=NOW - 10),
        node("n2", alive=False, gone_since=NOW - 10),
        node("n3"),
    ]
    s = snap(nodes, [vm("a", on="n1"), vm("b", on="n2")])
    d = plan(s)
    for name in ("a", "b"):
        w = one_for(d, name)
        assert isinstance(w, Wait)
        assert w.until == NOW - 10 + DEADLINE + 30
        assert "control-plane event" in w.reason
        assert "n1, n2 (2 of 3 nodes) vanished together" in w.reason
    later = snap(nodes, [vm("a", on="n1"), vm("b", on="n2")], now=NOW - 10 + DEADLINE + 30)
    assert {type(one_for(plan(later), n)) for n in ("a", "b")} == {Recover}


def test_mass_failure_does_not_hold_fenced_nodes() -> None:
    nodes = [
        node("n1", alive=False, gone_since=NOW - 10, fenced=True),
        node("n2", alive=False, gone_since=NOW - 10),
        node("n3", alive=False, gone_since=NOW - 10),
        node("n4", alive=False, gone_since=NOW - 10),
        node("n5"),
    ]
    # 3 of 5 unfenced nodes vanished: a mass failure, but n1 is known off
    d = plan(snap(nodes, [vm("a", on="n1"), vm("b", on="n2")]))
    assert isinstance(one_for(d, "a"), Recover)
    assert isinstance(one_for(d, "b"), Wait)


def test_half_the_nodes_is_not_a_mass_failure() -> None:
    nodes = [node("n1", alive=False, gone_since=NOW - 10), node("n2")]
    assert isinstance(one_for(plan(snap(nodes, [vm("a", on="n1")])), "a"), Recover)


def test_long_dead_nodes_do_not_make_a_mass_failure() -> None:
    nodes = [
        node("old1", alive=False, gone_since=NOW - 3600),
        node("old2", alive=False, gone_since=NOW - 3600),
        node("n1", alive=False, gone_since=NOW - 10),
        node("n2"),
        node("n3"),
    ]
    assert isinstance(one_for(plan(snap(nodes, [vm("a", on="n1")])), "a"), Recover)


def test_priorities_order_recovery_when_capacity_is_short() -> None:
    nodes = [node("n1", alive=False), node("n2", cpus=2)]
    vms = [
        vm("a-low", on="n1", priority=Priority.LOW),
        vm("b-high", on="n1", priority=Priority.HIGH),
        vm("c-med", on="n1", priority=Priority.MEDIUM),
    ]
    d = plan(snap(nodes, vms))
    assert [r.vm for r in of(d, Recover)] == ["b-high", "c-med"]
    low = one_for(d, "a-low")
    assert isinstance(low, LeaveFailed)
    assert low.retry
    assert "n2 has 0 of 2 vCPUs free" in low.reason


def test_recoveries_come_before_new_vms_of_the_same_priority() -> None:
    nodes = [node("n1", alive=False), node("n2", cpus=1)]
    d = plan(snap(nodes, [vm("a-new"), vm("z-old", on="n1")]))
    assert isinstance(one_for(d, "z-old"), Recover)
    assert isinstance(one_for(d, "a-new"), LeaveFailed)


def test_no_auto_start_is_left_failed_not_recovered() -> None:
    nodes = [node("n1", alive=False), node("n2")]
    d = one_for(plan(snap(nodes, [vm("lab", on="n1", priority=Priority.NO_AUTO_START)])), "lab")
    assert isinstance(d, LeaveFailed)
    assert not d.retry
    assert "no_auto_start" in d.reason


def test_no_auto_start_vm_started_by_an_operator_is_placed() -> None:
    d = one_for(plan(snap([node("n1")], [vm("lab", priority=Priority.NO_AUTO_START)])), "lab")
    assert isinstance(d, Place)


def test_failover_threshold_leaves_vm_failed() -> None:
    nodes = [node("n1", alive=False), node("n2")]
    recent = [NOW - 100, NOW - 50]
    ok = vm("a", on="n1", threshold=3, failovers=recent)
    assert isinstance(one_for(plan(snap(nodes, [ok])), "a"), Recover)
    over = vm("a", on="n1", threshold=2, failovers=recent)
    d = one_for(plan(snap(nodes, [over])), "a")
    assert isinstance(d, LeaveFailed)
    assert not d.retry
    assert "failed over 2 time(s) in the last 6h and its failover_threshold is 2" in d.reason


def test_failovers_outside_the_period_do_not_count() -> None:
    nodes = [node("n1", alive=False), node("n2")]
    old = vm("a", on="n1", threshold=1, failovers=[NOW - 6 * 3600 - 1, NOW - 7 * 3600])
    assert isinstance(one_for(plan(snap(nodes, [old])), "a"), Recover)


def test_threshold_zero_never_fails_over() -> None:
    nodes = [node("n1", alive=False), node("n2")]
    assert isinstance(one_for(plan(snap(nodes, [vm("a", on="n1", threshold=0)])), "a"), LeaveFailed)


def test_vm_left_failed_is_left_alone() -> None:
    nodes = [node("n1", alive=False), node("n2")]
    vms = [vm("a", on="n1", failed_reason="threshold"), vm("b", failed_reason="threshold")]
    assert [d for d in plan(snap(nodes, vms)) if d.subject.startswith("vm/")] == []


def test_vm_failed_on_a_live_node_moves_elsewhere() -> None:
    nodes = [node("n1"), node("n2")]
    crashed = vm("a", on="n1", epoch=3, state=VMState.FAILED, last_error="qemu exited 1")
    r = one_for(plan(snap(nodes, [crashed])), "a")
    assert isinstance(r, Recover)
    assert (r.from_node, r.to_node, r.epoch, r.from_dead) == ("n1", "n2", 4, False)
    assert "qemu exited 1" in r.reason


def test_vm_failed_on_the_only_node_stays_failed_with_reason() -> None:
    crashed = vm("a", on="n1", state=VMState.FAILED)
    d = one_for(plan(snap([node("n1")], [crashed])), "a")
    assert isinstance(d, LeaveFailed)
    assert d.retry
    assert "n1 is where it failed" in d.reason


def test_stale_failed_status_of_an_older_epoch_is_ignored() -> None:
    v = vm("a", on="n1", epoch=3, state=VMState.FAILED, status_epoch=2)
    assert plan(snap([node("n1"), node("n2")], [v])) == ()


def test_not_started_elsewhere_while_still_reported_on_a_live_node() -> None:
    # unplaced (e.g. a move half done) but its old agent still reports it running
    v = vm("a", status_on="n1", state=VMState.STOPPING)
    w = one_for(plan(snap([node("n1"), node("n2")], [v])), "a")
    assert isinstance(w, Wait)
    assert w.until is None
    assert "still reported stopping on n1" in w.reason


def test_not_started_elsewhere_while_reported_on_a_suspect_node() -> None:
    nodes = [node("n1", alive=False, gone_since=NOW - 1), node("n2", alive=False), node("n3")]
    v = vm("a", on="n2", status_on="n1", epoch=2)
    w = one_for(plan(snap(nodes, [v])), "a")
    assert isinstance(w, Wait)
    assert w.until == NOW - 1 + DEADLINE


def test_new_epoch_is_above_status_and_floor() -> None:
    from dataclasses import replace

    v = vm("a", on="n1", epoch=2, status_epoch=7)
    v = replace(v, epoch_floor=9)
    r = one_for(plan(snap([node("n1", alive=False), node("n2")], [v])), "a")
    assert isinstance(r, Recover)
    assert r.epoch == 10


def test_placed_on_unknown_node_waits() -> None:
    w = one_for(plan(snap([node("n2")], [vm("a", on="ghost")])), "a")
    assert isinstance(w, Wait)
    assert "a node the cluster does not know" in w.reason


def test_every_vm_of_a_dead_node_gets_one_decision() -> None:
    vms = [vm(f"v{i}", on="n1") for i in range(6)]
    d = plan(snap([node("n1", alive=False), node("n2", cpus=3), node("n3", cpus=2)], vms))
    for i in range(6):
        assert len(for_vm(d, f"v{i}")) == 1
    assert len(of(d, Recover)) == 5


def test_a_lease_seen_running_out_is_reclaimed_after_the_short_margin() -> None:
    from dataclasses import replace

    nodes = dead_n1(0.4)
    nodes[0] = replace(nodes[0], expired=True)
    w = one_for(plan(snap(nodes, [vm("web", on="n1")])), "web")
    assert isinstance(w, Wait)
    assert w.until == NOW - 0.4 + 0.5  # expired_margin 0.5 s, not fence_after + margin
    nodes[0] = replace(nodes[0], gone_since=NOW - 0.5)
    r = one_for(plan(snap(nodes, [vm("web", on="n1")])), "web")
    assert isinstance(r, Recover)
    assert "lease ran out" in r.reason


def test_with_the_fast_profile_a_lease_run_out_waits_until_the_watchdog_surely_fired() -> None:
    """TTL 2 s, fence_after 1.5 s: a lease seen to run out went only TTL - 1 s (etcd rounds
    the TTL down) = 1 s without a keepalive, so the watchdog may fire 0.5 s after the key
    went: the margin counts from then."""
    from dataclasses import replace

    from hvcluster.models.config import PROFILES

    nodes = dead_n1(0.4)
    nodes[0] = replace(nodes[0], expired=True)
    w = one_for(plan(snap(nodes, [vm("web", on="n1")], **PROFILES["fast"])), "web")
    assert isinstance(w, Wait)
    assert w.until == NOW - 0.4 + 0.5 + 0.5
