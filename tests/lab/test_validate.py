"""``hvc cluster validate`` against a real lab (etcd and agent processes, sim driver): the
probes cross between agent processes, the etcd checks read a real etcd."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from hvcluster.cli.main import app as cli_app
from hvcluster.cli.volume_cmd import place_marker
from hvcluster.host.pki import Authority
from hvcluster.lab import processes
from tests.lab.conftest import Lab, make_lab, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def sim_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from make_lab(tmp_path_factory.mktemp("validate-lab"), "sim", nodes=2)


def validate(lab: Lab) -> tuple[int, dict[str, dict[str, Any]]]:
    """``hvc cluster validate``, which finds the lab's admin token in its state file."""
    args = ["cluster", "validate", "--json", "--api", lab.api()]
    result = CliRunner().invoke(cli_app, args, env={"HVC_LAB_DIR": str(lab.dir)})
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


def test_hvc_lab_up_prints_an_admin_token_that_works(tmp_path: Path) -> None:
    """A real ``hvc lab up``: the token it prints opens the API (an admin route too); no
    token or a wrong one gets 401; etcd holds only its hash."""
    lab_dir = tmp_path / "lab"
    hvc = [sys.executable, "-m", "hvcluster"]
    env = {**os.environ, "HVC_LAB_DIR": str(lab_dir), "COLUMNS": "250"}
    try:
        up = subprocess.run(
            [*hvc, "lab", "up", "--driver", "sim", "--nodes", "1", "--dir", str(lab_dir)],
            capture_output=True,
            text=True,
            timeout=90,
            env=env,
        )
        assert up.returncode == 0, up.stderr
        lines = up.stdout.splitlines()
        token = lines[lines.index(next(x for x in lines if x.startswith("admin token"))) + 1]
        state = Lab(lab_dir).state
        # the defaults: 3 etcd members, and as root a namespace for every node and member
        assert len(state.etcd_members) == 3 and len(state.etcd_endpoints) == 3
        assert (state.net is not None) == (os.geteuid() == 0)
        assert token == state.token and token.startswith("admin.")
        assert (lab_dir / "lab.json").stat().st_mode & 0o077 == 0  # it holds the token
        api = f"{state.api[0]}/api/v1"
        bearer = {"Authorization": f"Bearer {token}"}
        ca = ssl.create_default_context(cafile=state.ca)
        assert httpx.get(f"{api}/tokens", headers=bearer, timeout=5, verify=ca).status_code == 200
        made = httpx.post(
            f"{api}/tokens",
            json={"name": "ops", "role": "operator"},
            headers=bearer,
            timeout=5,
            verify=ca,
        )
        assert made.status_code == 201, made.text
        refused = httpx.get(f"{api}/vms", timeout=5, verify=ca)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith(
            "Bearer"
        )
        wrong = {"Authorization": f"Bearer {token[:-2]}xx"}
        assert httpx.get(f"{api}/vms", headers=wrong, timeout=5, verify=ca).status_code == 401
        # hvc finds the token in the lab's state by itself
        listed = subprocess.run(
            [*hvc, "token", "list", "--json"], capture_output=True, text=True, timeout=30, env=env
        )
        assert listed.returncode == 0, listed.stderr
        assert {t["name"] for t in json.loads(listed.stdout)["tokens"]} == {"admin", "ops"}
        stored = subprocess.run(
            [
                "etcdctl",
                f"--endpoints={state.etcd_endpoints[0]}",
                f"--cacert={state.ca}",
                f"--cert={state.client_cert}",
                f"--key={state.client_key}",
                "get",
                "--prefix",
                "/hvc/lab/tokens/",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        ).stdout
        assert "admin" in stored and token.split(".", 1)[1] not in stored
    finally:
        subprocess.run([*hvc, "lab", "down", "--dir", str(lab_dir)], timeout=60, env=env)
    if state.net is not None:  # nothing of the lab's network is left behind
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        spaces = subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
        assert state.net.bridge not in links and state.net.bridge not in spaces
    assert not any(processes.alive(p) for p in (*state.etcd_pids, state.nodes[0].agent_pid))


def test_the_cli_refuses_an_api_whose_certificate_it_cannot_verify(
    sim_lab: Lab, tmp_path: Path
) -> None:
    other_ca = Authority(tmp_path / "other").ensure_ca()
    args = ["node", "list", "--api", sim_lab.api()]
    result = CliRunner().invoke(cli_app, args, env={"HVC_CA": str(other_ca)})
    assert result.exit_code != 0
    assert "not trusted" in result.output and "HVC_CA" in result.output
    assert "Traceback" not in result.output
    plain = sim_lab.api().replace("https://", "http://")
    result = CliRunner().invoke(cli_app, ["node", "list", "--api", plain])
    assert result.exit_code != 0 and "Traceback" not in result.output
