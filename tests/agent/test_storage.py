"""Shared volumes as an agent sees them (markers in tmp dirs), and VM disks on them:
creation with qemu-img, locks, deletion."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from hvcluster.agent.disks import RESWEEP_S, DiskBusy, DiskError, VolumeDisks
from hvcluster.agent.resources import HostResources, Resources
from hvcluster.drivers.sim import SimDriver
from hvcluster.host.network import MemoryLinks
from hvcluster.host.qemuimg import virtual_size
from hvcluster.host.storage import check_volume, resolve_disk
from hvcluster.models.base import encode
from hvcluster.models.storage import MARKER, DiskDeletion, Switch, SwitchType, Volume
from hvcluster.models.vm import Disk, VMSpec
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from tests.counting import CountingStore

pytestmark = pytest.mark.timeout(30)
KEYS = Keys("t")
GIB = 1024**3


def volume(path: Path, name: str = "csv1") -> Volume:
    return Volume(name=name, path=str(path), id=uuid.uuid4().hex)


def place_marker(v: Volume) -> None:
    """What an admin does once per volume ('hvc volume mark' writes a new id the same way)."""
    (Path(v.path) / MARKER).write_text(f"{v.id}\n")


def test_the_marker_an_admin_placed_is_checked_and_never_written(tmp_path: Path) -> None:
    v = volume(tmp_path / "csv1")
    missing = check_volume(v)
    assert not missing.seen and "not a directory" in (missing.problem or "")
    (tmp_path / "csv1").mkdir()
    fresh = check_volume(v)
    assert not fresh.seen and "hvc volume mark" in (fresh.problem or "")
    assert list((tmp_path / "csv1").iterdir()) == []  # checking wrote nothing
    place_marker(v)
    seen = check_volume(v)
    assert seen.seen and seen.free_mib is not None and seen.free_mib > 0
    other = v.model_copy(update={"id": uuid.uuid4().hex})
    wrong = check_volume(other)
    assert not wrong.seen and v.id in (wrong.problem or "")
    assert (tmp_path / "csv1" / MARKER).read_text().strip() == v.id  # never overwritten


def test_a_volume_path_leading_to_a_system_directory_is_not_seen(tmp_path: Path) -> None:
    (tmp_path / "csv1").symlink_to("/etc")  # the store says a path; the host says /etc
    v = volume(tmp_path / "csv1")
    r = check_volume(v)
    assert not r.seen and "/etc" in (r.problem or "") and "system directory" in (r.problem or "")


def test_disk_paths_never_leave_the_volume(tmp_path: Path) -> None:
    root = tmp_path / "csv1"
    (root / "vm").mkdir(parents=True)
    (root / "out").symlink_to(tmp_path)
    assert resolve_disk(root, "vm/a.qcow2") == (root / "vm" / "a.qcow2").resolve()
    for bad in ("out/x.qcow2", "/etc/passwd", "."):
        with pytest.raises(ValueError, match="leaves volume"):
            resolve_disk(root, bad)


async def host(store: MemoryStore, node: str, links: MemoryLinks | None = None) -> HostResources:
    reports: list[Resources] = []

    async def report(r: Resources) -> None:
        reports.append(r)

    async def say(kind: str, subject: str, reason: str) -> None:
        pass

    return HostResources(
        store, KEYS, node, links or MemoryLinks(), SimDriver(), report, say, interval=0.1
    )


async def test_nodes_agree_on_a_volume_and_a_different_id_is_missing(
    store: MemoryStore, tmp_path: Path
) -> None:
    (tmp_path / "csv1").mkdir()
    (tmp_path / "other").mkdir()
    v = volume(tmp_path / "csv1")
    place_marker(v)
    await store.put(KEYS.volume("csv1"), encode(v))
    n1, n2 = await host(store, "n1"), await host(store, "n2")
    first = await n1.check()
    assert first.volumes == ("csv1",) and first.volume_free_mib["csv1"] > 0
    assert n1.mounts == {"csv1": tmp_path / "csv1"}
    assert isinstance(n1.driver, SimDriver) and n1.driver.host.volumes == n1.mounts
    assert (await n2.check()).volumes == ("csv1",)
    # a node where another volume is mounted at that path sees a different id
    (tmp_path / "other" / MARKER).write_text("someone-else\n")
    await store.put(
        KEYS.volume("csv1"), encode(v.model_copy(update={"path": str(tmp_path / "other")}))
    )
    n3 = await host(store, "n3")
    third = await n3.check()
    assert third.volumes == () and "someone-else" in third.volume_problems["csv1"]
    assert n3.mounts == {}


async def test_no_agent_writes_a_marker(store: MemoryStore, tmp_path: Path) -> None:
    (tmp_path / "csv1").mkdir()
    v = volume(tmp_path / "csv1")
    await store.put(KEYS.volume("csv1"), encode(v))
    for node in ("n1", "n2"):
        r = await (await host(store, node)).check()
        assert r.volumes == () and "no marker" in r.volume_problems["csv1"]
    assert not (tmp_path / "csv1" / MARKER).exists()


async def test_switches_are_reported_with_their_problems(store: MemoryStore) -> None:
    links = MemoryLinks()
    links.add_nic("eth1")
    await store.put(
        KEYS.switch("lan"), encode(Switch(name="lan", type=SwitchType.EXTERNAL, uplink="eth1"))
    )
    await store.put(
        KEYS.switch("wan"), encode(Switch(name="wan", type=SwitchType.EXTERNAL, uplink="eth2"))
    )
    r = await (await host(store, "n1", links)).check()
    assert r.switches == ("lan",)
    assert r.switch_problems == {"wan": "uplink eth2 is not present on this host"}
    assert links.links["eth1"].master == "hvc-lan"


def spec(*disks: Disk) -> VMSpec:
    return VMSpec(name="db", disks=disks)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
async def test_sized_disks_are_created_then_grown(store: MemoryStore, tmp_path: Path) -> None:
    disks = VolumeDisks(store, KEYS, "n1", lambda: 0)
    disk = Disk(volume="csv1", path="db/root.qcow2", size_gib=1)
    with pytest.raises(DiskError, match="not seen on n1"):
        await disks.prepare(spec(disk))
    disks.mounts = {"csv1": tmp_path}
    assert await disks.prepare(spec(disk)) == ["created csv1:db/root.qcow2 (1 GiB)"]
    path = tmp_path / "db" / "root.qcow2"
    assert await virtual_size(path, "qcow2") == GIB
    assert await disks.prepare(spec(disk)) == []  # there and big enough: untouched
    bigger = disk.model_copy(update={"size_gib": 2})
    assert await disks.prepare(spec(bigger)) == ["grew csv1:db/root.qcow2 to 2 GiB"]
    assert await virtual_size(path, "qcow2") == 2 * GIB
    assert await disks.prepare(spec(disk)) == []  # never shrunk


async def test_disk_locks(store: MemoryStore) -> None:
    lease = (await store.grant(30)).id
    n1 = VolumeDisks(store, KEYS, "n1", lambda: lease)
    n2 = VolumeDisks(store, KEYS, "n2", lambda: lease)
    vm = spec(Disk(volume="csv1", path="a.qcow2"), Disk(path="/abs/b.qcow2"))
    compares, puts = await n1.lock_ops(vm)
    assert len(compares) == 1 and compares[0].target == "version"  # absent; only the volume disk
    assert (await store.txn(compares, puts)).succeeded
    key = KEYS.lock("disk:csv1:a.qcow2")
    kv = await store.get(key)
    assert kv is not None and kv.value == b"n1 db" and kv.lease == lease
    again, _ = await n1.lock_ops(vm)  # ours already: compared as ours
    assert again[0].target == "value"
    with pytest.raises(DiskBusy, match="locked by n1 db"):
        await n2.lock_ops(vm)
    # the sweep gives back what no longer runs here, and takes what runs without one
    await n1.sweep(set(), {"db": vm}, now=0.0)
    assert await store.get(key) is None
    await n2.sweep({"db"}, {"db": vm}, now=0.0)
    kv = await store.get(key)
    assert kv is not None and kv.value == b"n2 db"
    await n1.sweep(set(), {"db": vm}, now=0.0)  # not n1's to give back
    assert await store.get(key) is not None


async def test_a_sweep_reads_the_locks_again_on_a_change_a_refusal_or_after_a_while() -> None:
    store = CountingStore()
    lease = (await store.grant(30)).id
    n1 = VolumeDisks(store, KEYS, "n1", lambda: lease)
    vm = spec(Disk(volume="csv1", path="a.qcow2"))
    key = KEYS.lock("disk:csv1:a.qcow2")
    await store.put(key, b"n2 db", lease=lease)  # another node's still
    await n1.sweep({"db"}, {"db": vm}, now=0.0)
    await n1.sweep({"db"}, {"db": vm}, now=1.0)  # not taken: tried again
    assert len(store.ranged) == 2
    await store.delete(key)
    await n1.sweep({"db"}, {"db": vm}, now=2.0)
    kv = await store.get(key)
    assert kv is not None and kv.value == b"n1 db"
    await n1.sweep({"db"}, {"db": vm}, now=3.0)  # settled: nothing read
    assert len(store.ranged) == 3
    await store.delete(key)  # (an admin's hand) taken again once RESWEEP_S have passed
    await n1.sweep({"db"}, {"db": vm}, now=2.0 + RESWEEP_S - 0.1)
    assert await store.get(key) is None
    await n1.sweep({"db"}, {"db": vm}, now=2.0 + RESWEEP_S)
    assert await store.get(key) is not None
    await n1.sweep(set(), {"db": vm}, now=2.0 + RESWEEP_S + 1)  # a change: given back at once
    assert await store.get(key) is None


async def test_disks_of_a_deleted_vm_are_deleted_once_unlocked(
    store: MemoryStore, tmp_path: Path
) -> None:
    said: list[str] = []

    async def say(kind: str, subject: str, reason: str) -> None:
        said.append(kind)

    lease = (await store.grant(30)).id
    disks = VolumeDisks(store, KEYS, "n1", lambda: lease)
    disks.mounts = {"csv1": tmp_path}
    disk = Disk(volume="csv1", path="a.qcow2")
    (tmp_path / "a.qcow2").write_bytes(b"x")
    outside = tmp_path.parent / f"{tmp_path.name}-keep.qcow2"
    outside.write_bytes(b"y")
    await disks.record_created(disk, spec(disk))  # as prepare() records what it creates
    request = DiskDeletion(vm="db", disks=(disk,))
    key = KEYS.request("delete-disks/db")
    await store.put(key, encode(request))
    await store.put(KEYS.lock("disk:csv1:a.qcow2"), b"n2 db", lease=lease)  # still running
    await disks.carry_out_deletions([], say)
    assert (tmp_path / "a.qcow2").exists() and await store.get(key) is not None
    await store.delete(KEYS.lock("disk:csv1:a.qcow2"))
    await disks.carry_out_deletions(["db"], say)  # it runs here: not yet
    assert (tmp_path / "a.qcow2").exists()
    await disks.carry_out_deletions([], say)
    assert not (tmp_path / "a.qcow2").exists() and await store.get(key) is None
    assert said == ["vm.disks_deleted"] and outside.exists()
    assert await store.get(KEYS.created_disk("csv1:a.qcow2")) is None  # its record with it
    # a VM re-created under the same name keeps its disks
    (tmp_path / "a.qcow2").write_bytes(b"x")
    await store.put(key, encode(request))
    await store.put(KEYS.vm("db"), encode(spec(disk)))
    await disks.carry_out_deletions([], say)
    assert (tmp_path / "a.qcow2").exists() and await store.get(key) is None
    assert said[-1] == "vm.disks_kept"
