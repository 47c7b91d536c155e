"""``hvc sim run`` and ``hvc sim fuzz`` as a user runs them: output, exit codes, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hvcluster.entry import app

HERE = Path(__file__).parent

pytestmark = pytest.mark.timeout(600)


def test_run_prints_the_log_and_placement_as_json_and_exits_0() -> None:
    result = CliRunner().invoke(app, ["sim", "run", str(HERE / "failover.toml"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["scenario"] == "failover" and out["violations"] == []
    assert {e["kind"] for e in out["events"]} >= {"sim.crash", "vm.recovered"}
    assert out["placement"]["db"]["node"] in ("n1", "n3")


def test_run_of_a_bad_file_exits_2_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[nodes]]\nname = "n1"\n[[vms]]\nname = "a"\nvcpus = 0\n')
    result = CliRunner().invoke(app, ["sim", "run", str(bad)])
    assert result.exit_code == 2
    assert "vms.0.vcpus" in result.output


def test_a_run_that_breaks_an_invariant_exits_1_and_says_which(tmp_path: Path) -> None:
    scenario = tmp_path / "slow.toml"
    scenario.write_text(
        '[sim]\nduration_s = 12\nrecovery_slo_s = 2\n[[nodes]]\nname = "n1"\n[[nodes]]\n'
        'name = "n2"\n[[vms]]\nname = "a"\nha = { preferred_owners = ["n1"] }\n'
        '[[timeline]]\nat = 3\ndo = "crash"\nnode = "n1"\n'
    )
    result = CliRunner().invoke(app, ["sim", "run", str(scenario)])
    assert result.exit_code == 1
    assert "VIOLATION recovery  vm/a" in result.output


def test_fuzz_reports_its_runs(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["sim", "fuzz", "--runs", "2", "--seed", "5",
                                      "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 runs in" in result.output and "0 with violations" in result.output
