"""``hvc cluster capacity`` and ``hvc cluster balance`` against a real API server (no
controller runs beside it: the balance plan is refused with why; the balancing itself is
tested in tests/sim/test_balance.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cli.conftest import ApiServer

pytestmark = pytest.mark.timeout(60)


def test_capacity_against_the_setting(hvc: Any, server: ApiServer) -> None:
    shown = hvc("cluster", "capacity")
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())  # the console wraps long lines
    assert "survive 0 node failure(s); the cluster keeps room for 0" in text
    assert hvc("cluster", "config", "set", "admission.node_failures_tolerated=1").exit_code == 0
    below = hvc("cluster", "capacity")
    assert below.exit_code == 1 and "below the setting" in below.output
    found = json.loads(hvc("cluster", "capacity", "--json").output)
    assert found["tolerated"] == 1 and found["meets"] is False and found["action"] == "warn"


def test_balance_says_when_no_controller_can_plan(hvc: Any, server: ApiServer) -> None:
    result = hvc("cluster", "balance", "--dry-run")
    assert result.exit_code != 0
    assert "no controller is elected to plan a balance" in result.output
