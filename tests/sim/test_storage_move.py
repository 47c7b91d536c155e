"""Storage moves in an in-process cluster: the owning agent copies a running VM's disk to
another volume (the sim driver's model of a block mirror), then one transaction makes the
spec name it and moves the disk lock; refusals and failures leave the VM on its old disk."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from hvcluster.models.base import decode, encode
from hvcluster.models.lifecycle import MigrationState
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.models.storage import Volume
from hvcluster.models.vm import Disk, VMSpec
from hvcluster.store.migrations import change_migration, create_move, read_move
from tests.sim.cluster import SimCluster

pytestmark = pytest.mark.timeout(60)
_M = MigrationState


async def volumes(cluster: SimCluster, tmp: Path, *names: str) -> dict[str, Path]:
    paths = {}
    for name in names:
        path = tmp / f"vol-{name}"
        await cluster.add_volume(name, path)
        paths[name] = path
    return paths


async def running_vm(
    cluster: SimCluster, root: Path, name: str = "db", created: bool = True
) -> str:
    """``name`` running with its disk ``<name>/disk.qcow2`` on volume a (a real file), one
    the cluster created (recorded so), unless ``created`` is False (an admin's file)."""
    (root / name).mkdir(exist_ok=True)
    (root / name / "disk.qcow2").write_bytes(b"old disk")
    if created:
        await cluster.created_by_the_cluster(name, "a", f"{name}/disk.qcow2")

    async def sees_a() -> bool:
        kv = await cluster.store.get(cluster.keys.node("n1"))
        return kv is not None and b'"a"' in kv.value

    await cluster.wait_for(sees_a, 10, "n1 to see volume a")
    await cluster.create_vm(name, disks=[{"volume": "a", "path": f"{name}/disk.qcow2"}])
    return await cluster.wait_running(name)


async def request(cluster: SimCluster, vm: str, volume: str) -> Migration:
    placement = await cluster.placement(vm)
    assert placement is not None
    rec = await create_move(
        cluster.store, cluster.keys, vm, placement.node, placement.epoch, volume, "test"
    )
    assert rec is not None
    return rec


async def final(cluster: SimCluster, mid: str, timeout: float = 20) -> Migration:
    async def ended() -> Migration | None:
        rec = await read_move(cluster.store, cluster.keys, mid)
        return rec if rec is not None and not rec.active else None

    found: Migration = await cluster.wait_for(ended, timeout, f"storage move {mid} to end")
    return found


async def spec(cluster: SimCluster, vm: str) -> VMSpec:
    kv = await cluster.store.get(cluster.keys.vm(vm))
    assert kv is not None
    return decode(VMSpec, kv.key, kv.value)


async def test_a_running_vm_moves_its_disk_and_the_lock_follows(
    cluster: SimCluster, tmp_path: Path
) -> None:
    paths = await volumes(cluster, tmp_path, "a", "b")
    await cluster.start("n1")
    assert await running_vm(cluster, paths["a"]) == "n1"
    before = await cluster.placement("db")
    rec = await request(cluster, "db", "b")
    done = await final(cluster, rec.id)
    assert done.state is _M.DONE, done.reason
    assert (await spec(cluster, "db")).disks == (Disk(volume="b", path="db/disk.qcow2"),)
    assert await cluster.placement("db") == before, "it never left its node or epoch"
    assert await cluster.running_on("db") == "n1"
    assert (paths["b"] / "db" / "disk.qcow2").is_file()

    async def said() -> list[object]:
        return list(await cluster.event_list("storage.moved", "vm/db"))

    await cluster.wait_for(said, 5, "the move said")
    assert not (paths["a"] / "db" / "disk.qcow2").exists(), "the old disk file is deleted"
    new_lock = await cluster.store.get(cluster.keys.lock("disk:b:db/disk.qcow2"))
    assert new_lock is not None and new_lock.value == b"n1 db" and new_lock.lease > 0
    assert await cluster.store.get(cluster.keys.lock("disk:a:db/disk.qcow2")) is None
    [moved] = await cluster.event_list("storage.moved", "vm/db")
    assert "disk 0 to b:db/disk.qcow2" in moved.reason


async def test_an_old_disk_file_the_cluster_did_not_create_is_kept(
    cluster: SimCluster, tmp_path: Path
) -> None:
    paths = await volumes(cluster, tmp_path, "a", "b")
    await cluster.start("n1")
    await running_vm(cluster, paths["a"], created=False)  # a file an admin made
    rec = await request(cluster, "db", "b")
    done = await final(cluster, rec.id)
    assert done.state is _M.DONE, done.reason
    assert (await spec(cluster, "db")).disks == (Disk(volume="b", path="db/disk.qcow2"),)

    async def said() -> list[object]:
        return list(await cluster.event_list("storage.moved", "vm/db"))

    await cluster.wait_for(said, 5, "the move said")
    assert (paths["a"] / "db" / "disk.qcow2").read_bytes() == b"old disk", "the file is kept"
    [moved] = await cluster.event_list("storage.moved", "vm/db")
    assert "old file a:db/disk.qcow2 kept: the cluster did not create it" in moved.reason
    made = await cluster.store.get(cluster.keys.created_disk("b:db/disk.qcow2"))
    assert made is not None, "the new file is the cluster's: recorded"


async def test_a_volume_the_node_does_not_see_is_refused_with_the_reason(
    cluster: SimCluster, tmp_path: Path
) -> None:
    paths = await volumes(cluster, tmp_path, "a")
    ghost = Volume(name="ghost", path=str(tmp_path / "not-mounted"), id=uuid.uuid4().hex)
    await cluster.store.put(cluster.keys.volume("ghost"), encode(ghost))
    await cluster.start("n1")
    await running_vm(cluster, paths["a"])
    rec = await request(cluster, "db", "ghost")
    failed = await final(cluster, rec.id)
    assert failed.state is _M.FAILED
    assert failed.reason == "node n1 does not see volume 'ghost'"
    assert (await spec(cluster, "db")).disks[0].volume == "a"
    [said] = await cluster.event_list("storage.move_failed", "vm/db")
    assert "does not see volume 'ghost'" in said.reason
    assert await cluster.running_on("db") == "n1"


async def test_a_failed_copy_leaves_the_vm_on_its_old_disk(
    cluster: SimCluster, tmp_path: Path
) -> None:
    paths = await volumes(cluster, tmp_path, "a", "b")
    await cluster.start("n1")
    await running_vm(cluster, paths["a"])
    cluster.drivers["n1"].fail_next_disk_move("db", "target volume full")
    rec = await request(cluster, "db", "b")
    failed = await final(cluster, rec.id)
    assert failed.state is _M.FAILED
    assert "vm db disk 0" in failed.reason and "target volume full" in failed.reason
    assert (await spec(cluster, "db")).disks[0].volume == "a"
    assert (paths["a"] / "db" / "disk.qcow2").read_bytes() == b"old disk"
    assert not (paths["b"] / "db" / "disk.qcow2").exists(), "the half copy is removed"
    assert await cluster.running_on("db") == "n1"
    lock = await cluster.store.get(cluster.keys.lock("disk:a:db/disk.qcow2"))
    assert lock is not None and lock.value == b"n1 db"


async def test_a_cancel_mid_copy_stops_it(cluster: SimCluster, tmp_path: Path) -> None:
    paths = await volumes(cluster, tmp_path, "a", "b")
    await cluster.start("n1")
    await running_vm(cluster, paths["a"])
    driver = cluster.drivers["n1"]
    driver.params = driver.params.model_copy(update={"disk_copy_mib_s": 0.000_001})  # ~8 s
    rec = await request(cluster, "db", "b")

    async def copying() -> bool:
        now = await read_move(cluster.store, cluster.keys, rec.id)
        return now is not None and now.state is _M.TRANSFERRING

    await cluster.wait_for(copying, 10, "the copy to start")

    def cancel(cur: Migration) -> Migration:
        return cur.model_copy(update={"state": _M.CANCELLED, "reason": "test"})

    assert (
        await change_migration(cluster.store, cluster.keys, rec.id, cancel, storage=True)
        is not None
    )

    async def removed() -> bool:
        return not (paths["b"] / "db" / "disk.qcow2").exists()

    await cluster.wait_for(removed, 10, "the half copy removed")
    assert (await spec(cluster, "db")).disks[0].volume == "a"
    assert await cluster.running_on("db") == "n1"
    assert (await final(cluster, rec.id)).state is _M.CANCELLED


async def test_a_move_its_agent_lost_fails_and_its_unnamed_copy_goes(
    cluster: SimCluster, tmp_path: Path
) -> None:
    paths = await volumes(cluster, tmp_path, "a", "b")
    await cluster.start("n1")
    await running_vm(cluster, paths["a"])
    await running_vm(cluster, paths["a"], "web")
    # web's half copy, by an agent that died mid-move; db's disk path on b is db's own spec's
    (paths["b"] / "web").mkdir()
    (paths["b"] / "web" / "disk.qcow2").write_bytes(b"half a copy")
    await cluster.created_by_the_cluster("web", "b", "web/disk.qcow2")  # as it recorded first
    placement = await cluster.placement("web")
    assert placement is not None
    rec = Migration(
        id="web-lost",
        vm="web",
        source="n1",
        target="n1",
        kind=MigrationKind.STORAGE,
        state=_M.TRANSFERRING,
        epoch=placement.epoch,
        volume="b",
        created=cluster.clock.wall() if cluster.clock else time.time(),
    )
    await cluster.store.put(cluster.keys.storage_move(rec.id), encode(rec))
    failed = await final(cluster, rec.id)
    assert failed.state is _M.FAILED and "restarted mid-move" in failed.reason

    async def removed() -> bool:
        return not (paths["b"] / "web" / "disk.qcow2").exists()

    await cluster.wait_for(removed, 5, "the unnamed half copy removed")
    assert (await spec(cluster, "web")).disks[0].volume == "a"
    assert await cluster.running_on("web") == "n1"


async def test_finished_moves_are_pruned_after_a_week(cluster: SimCluster, tmp_path: Path) -> None:
    await cluster.start("n1")
    week = 7 * 86400
    assert cluster.clock is not None
    now = cluster.clock.wall()  # the cluster's (virtual) clock, the one it prunes by
    for mid, age in (("old-1", week + 60), ("new-1", week - 60)):
        rec = Migration(
            id=mid,
            vm="gone",
            source="n1",
            target="n1",
            kind=MigrationKind.STORAGE,
            state=_M.DONE,
            volume="b",
            created=now - age,
            updated=now - age,
        )
        await cluster.store.put(cluster.keys.storage_move(mid), encode(rec))

    async def pruned() -> bool:
        return await read_move(cluster.store, cluster.keys, "old-1") is None

    await cluster.wait_for(pruned, 5, "the week-old record pruned")
    assert await read_move(cluster.store, cluster.keys, "new-1") is not None
