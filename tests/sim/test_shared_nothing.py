"""Shared-nothing migration in an in-process cluster: a live migration that also copies the
VM's disks to a volume of the target; the flip moves the placement and rewrites the disk
paths in one transaction, and the source deletes its old files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hvcluster.models.base import encode
from hvcluster.models.job import new_id
from hvcluster.models.lifecycle import MigrationState
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.models.vm import Disk
from hvcluster.store.base import Compare, Put
from hvcluster.store.migrations import change_migration
from tests.sim.cluster import SimCluster
from tests.sim.moves import wait_state
from tests.sim.test_storage_move import running_vm, spec, volumes

pytestmark = pytest.mark.timeout(60)
_M = MigrationState


async def request(cluster: SimCluster, vm: str, to: str, volume: str) -> Migration:
    """As the API stores it (``POST /vms/{vm}/move`` with ``with_storage``)."""
    placement = await cluster.placement(vm)
    assert placement is not None
    rec = Migration(
        id=new_id(vm),
        vm=vm,
        source=placement.node,
        target=to,
        kind=MigrationKind.LIVE,
        epoch=placement.epoch,
        requested_by="test",
        volume=volume,
        created=time.time(),
        updated=time.time(),
    )
    key = cluster.keys.migration(rec.id)
    assert (await cluster.store.txn([Compare.absent(key)], [Put(key, encode(rec))])).succeeded
    return rec


async def test_disks_and_memory_move_together(cluster: SimCluster, tmp_path: Path) -> None:
    paths = await volumes(cluster, tmp_path, "a", "b")
    await cluster.start("n1", "n2")
    host = await running_vm(cluster, paths["a"])
    other = "n2" if host == "n1" else "n1"
    before = await cluster.placement("db")
    assert before is not None
    (paths["b"] / "db").mkdir()  # a leftover of an attempt whose target agent went away
    (paths["b"] / "db" / "disk.qcow2").write_bytes(b"half a copy")
    await cluster.created_by_the_cluster("db", "b", "db/disk.qcow2")  # that attempt made it
    rec = await request(cluster, "db", other, "b")
    done = await wait_state(cluster, rec.id, _M.DONE, _M.FAILED)
    assert done.state is _M.DONE, done.reason
    assert done.disk_sizes and done.disks_address
    after = await cluster.placement("db")
    assert after is not None and (after.node, after.epoch) == (other, before.epoch + 1)
    assert (await spec(cluster, "db")).disks == (Disk(volume="b", path="db/disk.qcow2"),)
    assert await cluster.wait_running("db") == other
    assert (paths["b"] / "db" / "disk.qcow2").is_file()

    async def old_gone() -> bool:
        return not (paths["a"] / "db" / "disk.qcow2").exists()

    await cluster.wait_for(old_gone, 10, "the source's old disk deleted")

    async def lock_moved() -> bool:
        kv = await cluster.store.get(cluster.keys.lock("disk:b:db/disk.qcow2"))
        old = await cluster.store.get(cluster.keys.lock("disk:a:db/disk.qcow2"))
        return kv is not None and kv.value == f"{other} db".encode() and old is None

    await cluster.wait_for(lock_moved, 10, "the disk lock on the new file, held by the target")


async def test_a_failed_disk_copy_leaves_the_vm_where_it_was(
    cluster: SimCluster, tmp_path: Path
) -> None:
    paths = await volumes(cluster, tmp_path, "a", "b")
    await cluster.start("n1", "n2")
    host = await running_vm(cluster, paths["a"])
    other = "n2" if host == "n1" else "n1"
    cluster.drivers[host].fail_next_disk_move("db", "the link went down")
    rec = await request(cluster, "db", other, "b")
    failed = await wait_state(cluster, rec.id, _M.DONE, _M.FAILED)
    assert failed.state is _M.FAILED and "the link went down" in failed.reason
    await stayed_on_its_disk(cluster, paths, host)


async def test_a_cancel_while_the_disks_copy_stops_the_copy(
    cluster: SimCluster, tmp_path: Path
) -> None:
    paths = await volumes(cluster, tmp_path, "a", "b")
    await cluster.start("n1", "n2")
    host = await running_vm(cluster, paths["a"])
    other = "n2" if host == "n1" else "n1"
    driver = cluster.drivers[host]
    driver.params = driver.params.model_copy(update={"disk_copy_mib_s": 0.000_001})  # ~8 s
    rec = await request(cluster, "db", other, "b")
    await wait_state(cluster, rec.id, _M.TRANSFERRING)

    def cancel(cur: Migration) -> Migration:
        return cur.model_copy(update={"state": _M.CANCELLED, "reason": "test"})

    assert await change_migration(cluster.store, cluster.keys, rec.id, cancel) is not None

    async def copy_gone() -> bool:
        return not (paths["b"] / "db" / "disk.qcow2").exists()

    await cluster.wait_for(copy_gone, 5, "the target's new file deleted")
    # (left alone, the copy would run ~8 s more)
    await cluster.wait_for(lambda: not driver.storage.copying, 5, "the source's copy stopped")
    assert await cluster.running_on("db") == host
    assert (await spec(cluster, "db")).disks == (Disk(volume="a", path="db/disk.qcow2"),)
    placement = await cluster.placement("db")
    assert placement is not None and placement.node == host


async def test_the_source_copies_disks_only_to_the_target_nodes_registered_address(
    cluster: SimCluster, tmp_path: Path
) -> None:
    """The memory's address is the target's, but the disks are offered on another host (as
    a record written by anyone could say): refused before any byte is copied, the record
    failed with the reason, the VM stays with its disk; the next move of it works."""
    paths = await volumes(cluster, tmp_path, "a", "b")
    await cluster.start("n1", "n2")
    host = await running_vm(cluster, paths["a"])
    other = "n2" if host == "n1" else "n1"
    cluster.drivers[other].serve_disks_elsewhere("db", "127.0.0.2")
    rec = await request(cluster, "db", other, "b")
    failed = await wait_state(cluster, rec.id, _M.DONE, _M.FAILED)
    assert failed.state is _M.FAILED
    assert failed.reason.startswith("refused to migrate db to its disks at 'sim-disks:")
    assert failed.reason.endswith(
        f"127.0.0.2 is not {other}'s registered migration address 127.0.0.1"
    )
    [said] = await cluster.event_list("migration.failed", "vm/db")
    assert f"is not {other}'s registered migration address" in said.reason
    assert failed.progress.bytes_transferred == 0
    await stayed_on_its_disk(cluster, paths, host)
    again = await request(cluster, "db", other, "b")
    done = await wait_state(cluster, again.id, _M.DONE, _M.FAILED)
    assert done.state is _M.DONE, done.reason
    assert await cluster.wait_running("db") == other


async def stayed_on_its_disk(cluster: SimCluster, paths: dict[str, Path], host: str) -> None:
    """``db`` still runs on ``host`` from its disk on volume a, untouched, and the copy its
    failed move began on volume b is deleted."""
    assert await cluster.running_on("db") == host
    assert (await spec(cluster, "db")).disks == (Disk(volume="a", path="db/disk.qcow2"),)
    assert (paths["a"] / "db" / "disk.qcow2").read_bytes() == b"old disk"

    async def copy_gone() -> bool:
        return not (paths["b"] / "db" / "disk.qcow2").exists()

    await cluster.wait_for(copy_gone, 10, "the target's new file deleted")
