"""``hvc volume`` and ``hvc switch`` against a real API server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from hvcluster.cli.main import app as cli_app
from hvcluster.models.base import encode
from hvcluster.models.node import Capacity, Node
from hvcluster.models.storage import MARKER
from tests.cli.conftest import KEYS, ApiServer

pytestmark = pytest.mark.timeout(60)


def ok(result: Any) -> str:
    assert result.exit_code == 0, result.output
    return str(result.output)


def local(*args: str) -> Result:
    """A host-local command (no API): 'hvc volume mark'."""
    return CliRunner().invoke(cli_app, list(args))


def test_volume_commands(hvc: Any, tmp_path: Path) -> None:
    root = tmp_path / "csv-cli"
    root.mkdir()
    unmarked = hvc("volume", "add", "csv-cli", str(root))
    assert unmarked.exit_code != 0 and f"'hvcvolumemark{root}'" in "".join(unmarked.output.split())
    assert list(root.iterdir()) == []
    marked = ok(local("volume", "mark", str(root)))
    placed = (root / MARKER).read_text().strip()
    assert f"marked{root}(id{placed})" in "".join(marked.split())
    assert "already marked" in ok(local("volume", "mark", str(root)))  # kept, not rewritten
    assert (root / MARKER).read_text().strip() == placed
    out = ok(hvc("volume", "add", "csv-cli", str(root)))
    assert f"volumecsv-cliat{root}(id{placed})" in "".join(out.split())
    listed = json.loads(ok(hvc("volume", "list", "--json")))
    mine = [v for v in listed["volumes"] if v["name"] == "csv-cli"]
    assert mine and mine[0]["path"] == str(root)
    assert "csv-cli" in ok(hvc("volume", "list"))
    assert mine[0]["id"] in ok(hvc("volume", "show", "csv-cli"))
    ok(hvc("vm", "create", "cli-vol-vm", "--disk", "csv-cli:vm/a.qcow2"))
    refused = hvc("volume", "rm", "csv-cli")
    assert refused.exit_code != 0 and "cli-vol-vm" in refused.output
    assert "Traceback" not in refused.output
    assert "disks" in ok(hvc("vm", "rm", "cli-vol-vm", "--disks"))
    ok(hvc("volume", "rm", "csv-cli"))
    gone = hvc("volume", "show", "csv-cli")
    assert gone.exit_code != 0 and "not found" in gone.output


def test_volume_mark_refuses_root_and_system_directories(tmp_path: Path) -> None:
    for path in ("/", "/etc", "/usr/lib"):
        refused = local("volume", "mark", path)
        assert refused.exit_code != 0 and "system directory" in refused.output
        assert "Traceback" not in refused.output
        assert not Path(path, MARKER).exists()
    (tmp_path / "to-root").symlink_to("/")
    refused = local("volume", "mark", str(tmp_path / "to-root"))
    assert refused.exit_code != 0 and "/ is a system directory" in refused.output


def test_switch_commands(hvc: Any) -> None:
    out = ok(hvc("switch", "add", "lan-cli", "--type", "external", "--uplink", "eth7"))
    assert "hvc-lan-cli" in out
    ok(hvc("switch", "add", "priv-cli"))
    listed = json.loads(ok(hvc("switch", "list", "--json")))["switches"]
    got = {s["name"]: (s["type"], s["uplink"]) for s in listed}
    assert got["lan-cli"] == ("external", "eth7") and got["priv-cli"] == ("private", None)
    assert "lan-cli" in ok(hvc("switch", "list"))
    bad = hvc("switch", "add", "x-cli", "--type", "internal", "--uplink", "eth7")
    assert bad.exit_code != 0 and "uplink" in bad.output
    for name in ("lan-cli", "priv-cli"):
        ok(hvc("switch", "rm", name))
    assert "lan-cli" not in ok(hvc("switch", "list"))


def test_node_show_tells_switches_and_volumes(hvc: Any, server: ApiServer) -> None:
    node = Node(
        name="n-res",
        address="127.0.0.1",
        capacity=Capacity(cpus=2, memory_mib=2048),
        switches=("lan",),
        switch_problems={"dmz": "uplink eth9 is not present on this host"},
        volumes=("csv1",),
        volume_free_mib={"csv1": 4096},
        volume_problems={"csv2": "/srv/csv2 is not a directory here"},
    )
    assert server.store is not None
    server.run(server.store.put(KEYS.node("n-res"), encode(node)))
    out = ok(hvc("node", "show", "n-res"))
    for words in ("lan", "dmz: uplink eth9", "csv1 (4096 MiB free)", "csv2: /srv/csv2"):
        assert words in out, words


def test_vm_disk_on_a_volume_with_a_size(hvc: Any) -> None:
    ok(hvc("vm", "create", "cli-sized", "--disk", "csv1:db/root.qcow2@2.5"))
    vm = json.loads(ok(hvc("vm", "show", "cli-sized", "--json")))
    disk = vm["spec"]["disks"][0]
    assert (disk["volume"], disk["path"], disk["size_gib"]) == ("csv1", "db/root.qcow2", 2.5)
    bad = hvc("vm", "create", "cli-bad", "--disk", "csv1:x.qcow2@big")
    assert bad.exit_code != 0 and "GiB" in bad.output
    ok(hvc("vm", "rm", "cli-sized"))
