"""A VM on a shared volume in a real lab: every agent sees the volume (its marker), the
agent that starts the VM creates its disk with qemu-img, the VM fails over with its disk
(the lock of the dead host's lease gone with it), and ``vm rm --disks`` deletes the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from hvcluster.cli.volume_cmd import place_marker
from hvcluster.guestimage.image import require_image
from hvcluster.models.storage import MARKER
from tests.lab.conftest import CACHE, Lab, wait_for
from tests.lab.test_qemu_failover import counter_rises, running

pytestmark = [pytest.mark.lab, pytest.mark.qemu, pytest.mark.timeout(240)]


def seen_by(lab: Lab, volume: str, avoid: str | None = None) -> list[str]:
    seen: list[str] = lab.get(f"/volumes/{volume}", avoid)["seen_by"]
    return seen


def test_a_vm_on_a_volume_gets_its_disk_and_fails_over_with_it(qemu_lab: Lab) -> None:
    lab = qemu_lab
    root = Path(lab.state.shared_dir) / "csv-lab"
    root.mkdir()
    marker_id, _ = place_marker(root)  # what an admin does: 'hvc volume mark PATH'
    volume = lab.post("/volumes", {"name": "csv-lab", "path": str(root)})
    assert volume["id"] == marker_id
    nodes = sorted(n.name for n in lab.state.nodes)
    wait_for(lambda: seen_by(lab, "csv-lab") == nodes, 20, "every node to see csv-lab")
    assert (root / MARKER).read_text().strip() == volume["id"]
    spec: dict[str, Any] = {
        "name": "vol-1",
        "memory_mib": 128,
        "boot": require_image(CACHE).boot().model_dump(),
        "disks": [{"volume": "csv-lab", "path": "vol-1/root.qcow2", "size_gib": 1 / 64}],
        "ha": {"priority": "high", "preferred_owners": ["n2"]},
    }
    lab.post("/vms", spec)
    vm = wait_for(lambda: running(lab, "vol-1"), 60, "vol-1 running")
    assert vm["node"] == "n2"
    disk = root / "vol-1" / "root.qcow2"
    before = counter_rises(disk, 0)
    lab.fault("kill", "n2")
    moved = wait_for(lambda: running(lab, "vol-1", avoid="n2"), 60, "recovery", 0.2)
    assert moved["node"] in ("n1", "n3")
    assert counter_rises(disk, before) > before  # the same disk, continued
    kinds = [e["event"]["kind"] for e in lab.events(avoid="n2")]
    assert "vm.disk_prepared" in kinds
    r = httpx.delete(
        f"{lab.api('n2')}/api/v1/vms/vol-1",
        params={"disks": "true"},
        timeout=5,
        headers=lab.headers,
        verify=lab.ca,
    )
    assert r.status_code == 202, r.text
    wait_for(lambda: not disk.exists(), 30, "the disk file deleted")
    lab.restart("n2")
    wait_for(
        lambda: any(n["name"] == "n2" and n["alive"] for n in lab.get("/nodes")["nodes"]),
        30,
        "n2 back",
    )
