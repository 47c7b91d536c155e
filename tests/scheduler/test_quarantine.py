"""Declaring nodes dead once per outage, quarantine after repeated failures, expiry."""

from __future__ import annotations

from typing import Any

from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.scheduler import DeclareDead, LeaveFailed, Place, Quarantine, Unquarantine, plan

from .factory import NOW, node, of, one_for, snap, vm

HOUR = 3600.0


def test_dead_node_is_declared_dead_once_per_outage() -> None:
    n1 = node("n1", alive=False, gone_since=NOW - 10)
    (d,) = of(plan(snap([n1, node("n2")], [vm("a", on="n1")])), DeclareDead)
    assert (d.node, d.since) == ("n1", NOW - 10)
    assert "declared dead; its VMs a may move" in d.reason
    recorded = node("n1", alive=False, gone_since=NOW - 10, failures=[NOW - 5])
    assert of(plan(snap([recorded, node("n2")], [vm("a", on="n1")])), DeclareDead) == []
    # a new outage, after the recorded one
    again = node("n1", alive=False, gone_since=NOW - 4.5, failures=[NOW - 5])
    assert len(of(plan(snap([again, node("n2")])), DeclareDead)) == 1


def test_dead_node_holding_nothing_is_declared_dead_too() -> None:
    n1 = node("n1", alive=False, gone_since=NOW - 10)
    (d,) = plan(snap([n1, node("n2")]))
    assert isinstance(d, DeclareDead)
    assert "it held no VMs" in d.reason


def test_suspect_node_is_not_declared_dead() -> None:
    n1 = node("n1", alive=False, gone_since=NOW - 1)
    assert of(plan(snap([n1, node("n2")], [vm("a", on="n1")])), DeclareDead) == []


def test_third_failure_in_an_hour_quarantines_in_the_same_plan() -> None:
    failures = [NOW - 0.9 * HOUR, NOW - 0.5 * HOUR]
    n1 = node("n1", alive=False, gone_since=NOW - 10, failures=failures)
    d = plan(snap([n1, node("n2")], [vm("a", on="n1")]))
    (q,) = of(d, Quarantine)
    assert q.node == "n1"
    assert q.until == NOW + 2 * HOUR
    assert "declared dead 3 time(s) within 1h (quarantine threshold 3)" in q.reason
    assert "for 2h" in q.reason
    # declared dead first, then quarantined
    kinds = [type(x) for x in d]
    assert kinds.index(DeclareDead) < kinds.index(Quarantine)


def test_failures_forgiven_by_an_admin_do_not_quarantine_again() -> None:
    """Resumed with clear_quarantine: the failures that quarantined it count no more, a
    new one after the resume does."""
    failures = [NOW - 30, NOW - 20, NOW - 10]
    n1 = node("n1", failures=failures, forgiven_at=NOW - 5)
    assert of(plan(snap([n1, node("n2")])), Quarantine) == []
    again = node("n1", failures=[*failures, NOW - 3, NOW - 2, NOW - 1], forgiven_at=NOW - 5)
    assert [q.node for q in of(plan(snap([again, node("n2")])), Quarantine)] == ["n1"]


def test_alive_node_with_enough_recorded_failures_is_quarantined_and_closed() -> None:
    n1 = node("n1", failures=[NOW - 30, NOW - 20, NOW - 10])
    d = plan(snap([n1, node("n2")], [vm("a")]))
    assert [q.node for q in of(d, Quarantine)] == ["n1"]
    p = one_for(d, "a")
    assert isinstance(p, Place) and p.node == "n2"


def test_failures_older_than_the_period_do_not_count() -> None:
    n1 = node("n1", failures=[NOW - 2 * HOUR, NOW - 0.5 * HOUR, NOW - 10])
    assert plan(snap([n1])) == ()


def test_quarantined_node_gets_no_vms_until_expiry() -> None:
    n1 = node("n1", admin=NodeAdminState.QUARANTINED, quarantined_until=NOW + 60)
    d = plan(snap([n1], [vm("a")]))
    f = one_for(d, "a")
    assert isinstance(f, LeaveFailed) and "n1 is quarantined" in f.reason
    assert of(d, Unquarantine) == []


def test_expired_quarantine_is_lifted() -> None:
    failures = [NOW - 2.5 * HOUR, NOW - 2.2 * HOUR, NOW - 2.1 * HOUR]
    n1 = node("n1", admin=NodeAdminState.QUARANTINED, quarantined_until=NOW, failures=failures)
    (u,) = plan(snap([n1]))
    assert isinstance(u, Unquarantine)
    assert u.node == "n1"
    assert "quarantine ended" in u.reason


def test_failures_before_the_last_quarantine_are_not_counted_again() -> None:
    # quarantine of 10 min after failures within a long period; lifted; the same failures
    # must not quarantine it again
    config: dict[str, Any] = {
        "quarantine": {"threshold": 3, "period_s": 4 * HOUR, "duration_s": 600.0}
    }
    failures = [NOW - 1000, NOW - 900, NOW - 800]
    n1 = node("n1", failures=failures, quarantined_until=NOW - 800 + 600)
    assert plan(snap([n1], **config)) == ()
    n1 = node(
        "n1", failures=[*failures, NOW - 100, NOW - 50, NOW - 10], quarantined_until=NOW - 800 + 600
    )
    assert [q.node for q in of(plan(snap([n1], **config)), Quarantine)] == ["n1"]


def test_draining_node_is_not_quarantined_mid_drain() -> None:
    n1 = node("n1", admin=NodeAdminState.DRAINING, failures=[NOW - 30, NOW - 20, NOW - 10])
    assert of(plan(snap([n1])), Quarantine) == []
