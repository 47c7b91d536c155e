"""``hvc cluster validate`` against a real lab (etcd and agent processes, sim driver): the
probes cross between agent processes, the etcd checks read a real etcd."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hvcluster.cli.main import app as cli_app
from hvcluster.cli.volume_cmd import place_marker
from tests.lab.conftest import Lab, make_lab, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def sim_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from make_lab(tmp_path_factory.mktemp("validate-lab"), "sim", nodes=2)


def validate(lab: Lab) -> tuple[int, dict[str, dict[str, Any]]]:
    result = CliRunner().invoke(cli_app, ["cluster", "validate", "--json", "--api", lab.api()])
    assert result.exit_code in (0, 1), result.output
    report = json.loads(result.stdout)
    return result.exit_code, {c["name"]: c for c in report["checks"]}


def alive(lab: Lab) -> list[str]:
    return sorted(n["name"] for n in lab.get("/nodes")["nodes"] if n["alive"])


def test_a_lab_validates_and_a_volume_no_node_sees_fails(sim_lab: Lab, tmp_path: Path) -> None:
    lab = sim_lab
    wait_for(lambda: alive(lab) == ["n1", "n2"], 30, "both nodes alive")
    root = Path(lab.state.shared_dir) / "csv-val"
    root.mkdir()
    place_marker(root)  # what an admin does: 'hvc volume mark PATH'
    lab.post("/volumes", {"name": "csv-val", "path": str(root)})
    lab.post("/switches", {"name": "lan"})
    wait_for(lambda: lab.get("/volumes/csv-val")["seen_by"] == ["n1", "n2"], 20, "volume seen")
    wait_for(lambda: lab.get("/switches/lan")["ready_on"] == ["n1", "n2"], 20, "switch ready")

    code, checks = validate(lab)
    failed = {n: c["message"] for n, c in checks.items() if c["status"] == "fail"}
    assert failed == {} and code == 0
    for name in (
        "agent api n1 -> n2",
        "agent api n2 -> n1",
        "migration port n1 -> n2",
        "migration port n2 -> n1",
        "volume csv-val",
        "switch lan",
        "live migration n1 <-> n2",
    ):
        assert checks[name]["status"] == "pass", checks[name]
    assert "guest CPU sim-cpu" in checks["node n1"]["message"]  # reported by the agent
    assert checks["leader"]["status"] == "pass" and checks["members"]["status"] == "pass"
    assert "etcd0" in checks["leader"]["message"]
    assert checks["clock n2"]["status"] == "pass"  # one machine, one clock

    gone_root = tmp_path / "not-there"
    gone_root.mkdir()
    place_marker(gone_root)  # added while mounted; then its mount goes away
    lab.post("/volumes", {"name": "gone", "path": str(gone_root)})
    shutil.rmtree(gone_root)
    wait_for(lambda: set(lab.get("/volumes/gone")["problems"]) == {"n1", "n2"}, 20, "problems said")
    code, checks = validate(lab)
    assert code == 1
    gone = checks["volume gone"]
    assert gone["status"] == "fail" and gone["nodes"] == ["n1", "n2"]
