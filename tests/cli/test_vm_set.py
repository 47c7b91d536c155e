"""``hvc vm set``: edits through PATCH /vms/{name}, the conflict exit code, --json."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hvcluster.cli.output import ExitCode
from tests.cli.conftest import ApiServer

pytestmark = pytest.mark.timeout(60)


def test_vm_set(hvc: Any) -> None:
    assert hvc("vm", "create", "set-1", "--stopped", "--preferred-owner", "n1").exit_code == 0
    revision = json.loads(hvc("vm", "show", "set-1", "--json").output)["spec_revision"]
    done = hvc(
        "vm",
        "set",
        "set-1",
        "--memory",
        "256",
        "--vcpus",
        "2",
        "--priority",
        "high",
        "--preferred-owner",
        "n2,n1",
        "--failback",
        "window",
        "--failback-window",
        "22-6",
        "--set",
        "ha.failover_period_s=3600",
        "--revision",
        str(revision),
    )
    assert done.exit_code == 0, done.output
    assert "memory_mib: 128 -> 256" in done.output
    spec = json.loads(hvc("vm", "show", "set-1", "--json").output)["spec"]
    assert (spec["memory_mib"], spec["vcpus"], spec["ha"]["priority"]) == (256, 2, "high")
    assert spec["ha"]["preferred_owners"] == ["n2", "n1"]
    assert spec["ha"]["failback"] == {
        "mode": "window",
        "window_start_hour": 22,
        "window_end_hour": 6,
    }
    assert spec["ha"]["failover_period_s"] == 3600

    stale = hvc("vm", "set", "set-1", "--vcpus", "3", "--revision", str(revision))
    assert stale.exit_code == ExitCode.CONFLICT, stale.output
    assert f"changed since revision {revision}" in " ".join(stale.output.split())

    cleared = json.loads(hvc("vm", "set", "set-1", "--preferred-owner", "", "--json").output)
    assert cleared["spec"]["ha"]["preferred_owners"] == []
    assert [c["key"] for c in cleared["changes"]] == ["ha.preferred_owners"]

    assert hvc("vm", "set", "set-1").exit_code == ExitCode.USAGE  # nothing to change
    bad = hvc("vm", "set", "set-1", "--memory", "1")
    assert bad.exit_code == ExitCode.USAGE and "memory_mib" in bad.output
    assert hvc("vm", "set", "ghost", "--vcpus", "2").exit_code == ExitCode.NOT_FOUND


def test_actions_answer_json(hvc: Any, server: ApiServer) -> None:
    server.add_node("jn1")
    assert hvc("vm", "create", "json-1", "--stopped").exit_code == 0
    started = json.loads(hvc("vm", "start", "json-1", "--json").output)
    assert (started["name"], started["desired_state"]) == ("json-1", "running")
    paused = json.loads(hvc("node", "pause", "jn1", "--json").output)
    assert paused["admin_state"] == "paused"
    resumed = json.loads(hvc("node", "resume", "jn1", "--json").output)
    assert resumed["admin_state"] == "up"
    removed = json.loads(hvc("vm", "rm", "json-1", "--json").output)
    assert removed["name"] == "json-1"
