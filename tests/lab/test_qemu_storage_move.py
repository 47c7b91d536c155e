"""Storage migration of the real test guest in a lab, through the API: its disk moves to
another volume while it runs (QEMU block mirror), the counter it writes to the disk goes on
from the new file with no reset, and the old file is gone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hvcluster.cli.volume_cmd import place_marker
from hvcluster.guestimage.image import cached_image, require_image
from hvcluster.guestimage.testguest import read_counter
from tests.lab.conftest import CACHE, Lab, make_lab, wait_for
from tests.lab.test_qemu_failover import counter_rises, running, vm_pid

pytestmark = [pytest.mark.lab, pytest.mark.qemu, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def lab_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if cached_image(CACHE) is None:
        pytest.fail("the test guest image is not built: run scripts/install (hvc image build)")
    yield from make_lab(tmp_path_factory.mktemp("qemu-storage"), "qemu", nodes=2)


def add_volume(lab: Lab, name: str) -> Path:
    root = Path(lab.state.shared_dir) / name
    root.mkdir()
    place_marker(root)  # what an admin does: 'hvc volume mark PATH'
    lab.post("/volumes", {"name": name, "path": str(root)})
    nodes = sorted(n.name for n in lab.state.nodes)
    wait_for(lambda: lab.get(f"/volumes/{name}")["seen_by"] == nodes, 20, f"{name} seen")
    return root


def finished(lab: Lab, mid: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        m: dict[str, Any] = lab.get(f"/storage-moves/{mid}")
        if m["state"] in ("failed", "cancelled"):
            log = Path(lab.state.node(m["source"]).run_dir) / "agent.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise AssertionError(f"storage move {m['state']}: {m['reason']}\n{tail}")
        return m if m["state"] == "done" else None

    done: dict[str, Any] = wait_for(ended, 90, f"storage move {mid}", 0.1)
    return done


def test_a_running_vm_moves_its_disk_to_another_volume_and_keeps_counting(
    lab_storage: Lab,
) -> None:
    lab = lab_storage
    a, b = add_volume(lab, "vol-a"), add_volume(lab, "vol-b")
    spec: dict[str, Any] = {
        "name": "mover",
        "memory_mib": 128,
        "boot": require_image(CACHE).boot().model_dump(),
        "disks": [{"volume": "vol-a", "path": "mover/root.qcow2", "size_gib": 1 / 32}],
        "ha": {"preferred_owners": ["n1"]},
    }
    lab.post("/vms", spec)
    vm = wait_for(lambda: running(lab, "mover"), 60, "mover running")
    assert vm["node"] == "n1"
    pid = vm_pid(lab, "n1", "mover")
    old, new = a / "mover" / "root.qcow2", b / "mover" / "root.qcow2"
    before = counter_rises(old, 2)

    rec = lab.post("/vms/mover/move-storage", {"volume": "vol-b"})
    assert (rec["kind"], rec["source"], rec["volume"]) == ("storage", "n1", "vol-b")
    done = finished(lab, rec["id"])
    assert done["progress"]["bytes_total"] in (0, 32 * 1024 * 1024)

    assert lab.vm("mover")["spec"]["disks"][0]["volume"] == "vol-b"
    wait_for(lambda: not old.exists(), 10, "the old disk file deleted")
    at_switch = read_counter(new)
    assert at_switch >= before, "the new file carries on from the old one's value"
    counter_rises(new, at_switch + 3)
    assert vm_pid(lab, "n1", "mover") == pid, "the same QEMU process: never restarted"
    serial = Path(lab.state.node("n1").run_dir) / "vms" / "mover" / "serial.log"
    assert serial.read_text(errors="replace").count("HVC-BOOT") == 1, "no reset"
    kinds = [e["event"]["kind"] for e in lab.events()]
    assert "storage.moved" in kinds

    # Moving it back works the same way; a volume the node does not see is refused.
    assert lab.post("/vms/mover/move-storage", {"volume": "vol-a"})["state"] == "requested"
    wait_for(lambda: not new.exists(), 60, "moved back: the vol-b file deleted")
    counter_rises(old, read_counter(old) + 2)


def test_shared_nothing_migration_moves_disk_and_memory_and_keeps_counting(
    lab_storage: Lab,
) -> None:
    """Live migration to n2 with the disk copied to another volume (over NBD, while the
    guest writes): it goes on counting on n2 from its own new file."""
    lab = lab_storage
    c, d = add_volume(lab, "vol-c"), add_volume(lab, "vol-d")
    spec: dict[str, Any] = {
        "name": "nomad",
        "memory_mib": 128,
        "boot": require_image(CACHE).boot().model_dump(),
        "disks": [{"volume": "vol-c", "path": "nomad/root.qcow2", "size_gib": 1 / 32}],
        "ha": {"preferred_owners": ["n1"]},
    }
    lab.post("/vms", spec)
    vm = wait_for(lambda: running(lab, "nomad"), 60, "nomad running")
    assert vm["node"] == "n1"
    old, new = c / "nomad" / "root.qcow2", d / "nomad" / "root.qcow2"
    counter_rises(old, 2)

    rec = lab.post("/vms/nomad/move", {"to": "n2", "with_storage": "vol-d"})
    assert rec["volume"] == "vol-d"

    def finished() -> dict[str, Any] | None:
        m: dict[str, Any] = lab.get(f"/migrations/{rec['id']}")
        if m["state"] in ("failed", "cancelled"):
            raise AssertionError(f"migration {m['state']}: {m['reason']}")
        return m if m["state"] == "done" and m["downtime_ms"] is not None else None

    done: dict[str, Any] = wait_for(finished, 90, "the shared-nothing migration", 0.1)
    assert done["disk_sizes"] == [32 * 1024 * 1024]
    moved = wait_for(lambda: running(lab, "nomad"), 30, "nomad running on n2")
    assert moved["node"] == "n2"
    assert moved["spec"]["disks"][0]["volume"] == "vol-d"
    at_switch = read_counter(new)
    counter_rises(new, at_switch + 3)
    wait_for(lambda: not old.exists(), 20, "the source's old disk deleted")
    serial = Path(lab.state.node("n2").run_dir) / "vms" / "nomad" / "serial.log"
    assert "HVC-BOOT" not in serial.read_text(errors="replace"), "continued, not booted"
