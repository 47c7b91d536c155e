"""Start-order groups: a VM waits for the groups it starts after, or for the delay."""

from __future__ import annotations

from hvcluster.models.lifecycle import VMState
from hvcluster.scheduler import Place, Recover, Wait, plan

from .factory import NOW, node, one_for, snap, vm


def test_waits_for_its_group_then_starts() -> None:
    db_starting = vm("db1", on="n1", group="db", state=VMState.STARTING)
    app = vm("app1", group="app", after=("db",), pending_since=NOW - 5)
    w = one_for(plan(snap([node("n1")], [db_starting, app])), "app1")
    assert isinstance(w, Wait)
    assert w.until == NOW - 5 + 30
    assert "waits for start group(s) db (0/1 running)" in w.reason
    db_running = vm("db1", on="n1", group="db")
    p = one_for(plan(snap([node("n1")], [db_running, app])), "app1")
    assert isinstance(p, Place)
    assert "start group(s) db running" in p.reason


def test_whole_group_must_run() -> None:
    vms = [
        vm("db1", on="n1", group="db"),
        vm("db2", on="n1", group="db", state=VMState.STARTING),
        vm("app1", after=("db",)),
    ]
    w = one_for(plan(snap([node("n1")], vms)), "app1")
    assert isinstance(w, Wait)
    assert "db (1/2 running)" in w.reason


def test_group_placed_in_the_same_plan_is_not_running_yet() -> None:
    vms = [vm("db1", group="db"), vm("app1", after=("db",))]
    d = plan(snap([node("n1")], vms))
    assert isinstance(one_for(d, "db1"), Place)
    assert isinstance(one_for(d, "app1"), Wait)


def test_starts_after_the_delay_anyway() -> None:
    vms = [
        vm("db1", group="db", failed_reason="broken"),
        vm("app1", after=("db",), pending_since=NOW - 30),
    ]
    p = one_for(plan(snap([node("n1")], vms)), "app1")
    assert isinstance(p, Place)
    assert "start_group_delay_s 30s passed" in p.reason


def test_unknown_pending_since_counts_from_now() -> None:
    vms = [vm("db1", group="db", state=None), vm("app1", after=("db",))]
    w = one_for(plan(snap([node("n1", cpus=1)], vms)), "app1")
    assert isinstance(w, Wait)
    assert w.until == NOW + 30


def test_group_without_vms_that_want_to_run_holds_nothing() -> None:
    vms = [vm("db1", group="db", desired="stopped"), vm("app1", after=("db", "nothing"))]
    assert isinstance(one_for(plan(snap([node("n1")], vms)), "app1"), Place)


def test_recovery_respects_start_order() -> None:
    nodes = [node("n1", alive=False), node("n2")]
    vms = [
        vm("db1", on="n1", group="db"),
        vm("app1", on="n1", after=("db",), pending_since=NOW - 1),
    ]
    d = plan(snap(nodes, vms))
    assert isinstance(one_for(d, "db1"), Recover)
    assert isinstance(one_for(d, "app1"), Wait)


def test_zero_delay_never_waits() -> None:
    vms = [vm("db1", group="db", state=None), vm("app1", after=("db",))]
    p = one_for(plan(snap([node("n1")], vms, start_group_delay_s=0)), "app1")
    assert isinstance(p, Place)


def test_each_wait_keeps_its_own_reason_and_shares_what_it_waits_on() -> None:
    vms = [vm("db", group="db")] + [vm(f"app{i}", after=("db",)) for i in range(8)]
    waits = [d for d in plan(snap([node("n1")], vms)) if isinstance(d, Wait)]
    assert len(waits) == 8
    assert {w.on for w in waits} == {"group/db"}
    assert {w.cause for w in waits} == {
        "start group(s) db (0/1 running) not running yet; each starts once they are, or "
        "start_group_delay_s 30s after it became startable"
    }
    assert all(w.reason.startswith(f"{w.subject[3:]} waits for start group(s) db") for w in waits)
