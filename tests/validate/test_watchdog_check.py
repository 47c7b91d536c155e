"""``hvc cluster validate`` fails a node whose watchdog does not acknowledge feeding."""

from __future__ import annotations

from hvcluster.models.node import WatchdogReport
from hvcluster.models.validation import CheckStatus
from tests.validate.test_checks import by_name, facts, node


def test_a_node_whose_watchdog_is_silent_fails_inventory() -> None:
    silent = WatchdogReport(
        acknowledging=False, since=1.0, problem="no watchdog listens at /run/hvc/watchdog.sock"
    )
    ok = WatchdogReport(acknowledging=True, since=1.0)
    checks = by_name(facts(node("n1", watchdog=silent), node("n2", watchdog=ok)))
    failed = checks["node n1"]
    assert failed.status is CheckStatus.FAIL
    assert "n1's watchdog has not acknowledged feeding for 999s" in failed.message
    assert "no watchdog listens at /run/hvc/watchdog.sock" in failed.message
    assert "hvc watchdog --run-dir" in failed.action
    assert checks["node n2"].status is CheckStatus.PASS
