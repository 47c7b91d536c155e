"""``hvc cluster config show|set`` against a real API server, and the exit codes scripts
rely on."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hvcluster.cli.output import ExitCode
from tests.cli.conftest import ApiServer, free_port

pytestmark = pytest.mark.timeout(60)


def test_set_then_show(hvc: Any, server: ApiServer) -> None:
    before = json.loads(hvc("cluster", "config", "show", "--json").output)
    done = hvc(
        "cluster",
        "config",
        "set",
        "migration.downtime_limit_ms=450",
        "migration.drain_fallback=stay",
        "allowed_disk_dirs=/srv/images,/srv/more",
        "fence_command=ipmi-off {node}",
        "--reason",
        "tuning",
    )
    assert done.exit_code == 0, done.output
    assert "migration.downtime_limit_ms: 300 -> 450" in done.output
    assert "migration.drain_fallback: quick -> stay" in done.output
    shown = json.loads(hvc("cluster", "config", "show", "--json").output)
    config = shown["config"]
    assert config["migration"]["downtime_limit_ms"] == 450
    assert config["migration"]["drain_fallback"] == "stay"
    assert config["allowed_disk_dirs"] == ["/srv/images", "/srv/more"]
    assert config["fence_command"] == "ipmi-off {node}"
    assert shown["revision"] > before["revision"]

    table = hvc("cluster", "config", "show")
    assert table.exit_code == 0 and "migration.downtime_limit_ms" in table.output
    assert "fence_after_s *" in table.output  # marked: needs an agent restart

    timing = hvc("cluster", "config", "set", "lease_ttl_s=5", "fence_after_s=3.5")
    assert timing.exit_code == 0, timing.output
    assert "agents use it once restarted" in timing.output

    events = json.loads(hvc("events", "--json").output)
    changed = [
        e["event"] for e in events["events"] if e["event"]["kind"] == "cluster.config_changed"
    ]
    assert any("drain_fallback 'quick' -> 'stay'" in e["reason"] for e in changed)
    # put the timings back for the other tests of the module
    back = hvc("cluster", "config", "set", "fence_after_s=3", "lease_ttl_s=4")
    assert back.exit_code == 0, back.output


def test_refusals_and_their_exit_codes(hvc: Any) -> None:
    refused = hvc("cluster", "config", "set", "lease_ttl_s=2")
    assert refused.exit_code == ExitCode.USAGE
    assert "lease_ttl_s" in refused.output and "lease can expire" in refused.output
    assert "Traceback" not in refused.output

    unknown = hvc("cluster", "config", "set", "migration.speed=9")
    assert unknown.exit_code == ExitCode.USAGE and "settable" in unknown.output
    shape = hvc("cluster", "config", "set", "fence_after_s")
    assert shape.exit_code == ExitCode.USAGE and "KEY=VALUE" in shape.output

    revision = json.loads(hvc("cluster", "config", "show", "--json").output)["revision"]
    assert hvc("cluster", "config", "set", "quarantine.threshold=6").exit_code == 0
    stale = hvc("cluster", "config", "set", "quarantine.threshold=7", "--revision", str(revision))
    assert stale.exit_code == ExitCode.CONFLICT, stale.output
    assert f"changed since revision {revision}" in stale.output


def test_exit_codes(hvc: Any, server: ApiServer) -> None:
    missing = hvc("vm", "show", "nope")
    assert missing.exit_code == ExitCode.NOT_FOUND, missing.output
    assert hvc("vm", "create", "ec-1", "--stopped").exit_code == 0
    exists = hvc("vm", "create", "ec-1")
    assert exists.exit_code == ExitCode.CONFLICT, exists.output
    usage = hvc("vm", "create", "ec-2", "--memory", "many")
    assert usage.exit_code == ExitCode.USAGE
    invalid = hvc("vm", "create", "ec-3", "--memory", "1")
    assert invalid.exit_code == ExitCode.USAGE and "memory_mib" in invalid.output


def test_unreachable_exit_code() -> None:
    from typer.testing import CliRunner

    from hvcluster.cli.main import app

    dead = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["vm", "list", "--api", dead], env={"HVC_TOKEN": "x.y"})
    assert result.exit_code == ExitCode.UNREACHABLE, result.output
    assert "connection refused" in " ".join(result.output.split())
