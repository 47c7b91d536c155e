"""``hvc lab chaos`` refuses what it cannot run, by name, before it touches a lab."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from hvcluster.cli.main import app as cli_app
from hvcluster.lab.state import LabState, save

pytestmark = pytest.mark.timeout(60)


def chaos(*args: str) -> Result:
    return CliRunner().invoke(cli_app, ["lab", "chaos", *args], env={"COLUMNS": "200"})


def test_bad_options_are_refused_by_name(tmp_path: Path) -> None:
    for args, said in (
        (("--faults", "kill,explode"), "--faults"),
        (("--duration", "ten minutes"), "--duration"),
        ((), "no lab running here"),
    ):
        result = chaos(*args, "--dir", str(tmp_path))
        assert result.exit_code != 0 and said in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_a_lab_on_another_timing_profile_is_refused(tmp_path: Path) -> None:
    save(LabState(cluster="lab", dir=str(tmp_path), driver="sim", etcd_endpoints=("x:1",)))
    result = chaos("--profile", "fast", "--dir", str(tmp_path))
    assert result.exit_code != 0
    assert "runs the default profile" in result.output and "--profile fast" in result.output
