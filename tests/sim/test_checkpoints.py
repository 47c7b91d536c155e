"""Checkpoints in an in-process cluster: the owning agent carries out each operation (the
sim driver's fake keeps them beside the disk, as qcow2 keeps them inside it), the list is
written with the result, refusals fail with the reason, and a failover keeps them."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvcluster.agent.checkpoints import RETAIN_S
from hvcluster.models.base import encode
from hvcluster.models.checkpoint import CheckpointAction, CheckpointList, CheckpointOp
from hvcluster.models.lifecycle import MigrationState
from hvcluster.models.vm import VMSpec
from hvcluster.store.checkpoints import create_op, read_list, read_op
from hvcluster.store.reads import read_value
from tests.sim.cluster import SimCluster

pytestmark = pytest.mark.timeout(60)
_A = CheckpointAction


async def run_op(cluster: SimCluster, vm: str, action: CheckpointAction, name: str) -> CheckpointOp:
    placement = await cluster.placement(vm)
    assert placement is not None
    op = await create_op(
        cluster.store, cluster.keys, vm, placement.node, placement.epoch, action, name, "test"
    )
    assert op is not None

    async def ended() -> CheckpointOp | None:
        found = await read_op(cluster.store, cluster.keys, op.id)
        return found if found is not None and not found.active else None

    done: CheckpointOp = await cluster.wait_for(ended, 20, f"checkpoint op {op.id} to end")
    assert await cluster.store.get(cluster.keys.job(vm)) is None, "its end frees the VM"
    return done


async def listed(cluster: SimCluster, vm: str) -> CheckpointList:
    spec = await read_value(cluster.store, cluster.keys.vm(vm), VMSpec)
    assert spec is not None
    found = await read_list(cluster.store, cluster.keys, spec)
    assert found.uid == spec.uid != "", "the agent says whose disks these are"
    return found


async def test_create_revert_delete_and_a_failover_keeps_them(
    cluster: SimCluster, tmp_path: Path
) -> None:
    disk = tmp_path / "vol-a" / "db" / "disk.qcow2"
    disk.parent.mkdir(parents=True)
    disk.write_bytes(b"state 1")
    await cluster.add_volume("a", tmp_path / "vol-a")
    await cluster.start("n1", "n2")
    await cluster.create_vm(
        "db", disks=[{"volume": "a", "path": "db/disk.qcow2"}], ha={"preferred_owners": ["n1"]}
    )
    assert await cluster.wait_running("db") == "n1"

    made = await run_op(cluster, "db", _A.CREATE, "one")
    assert made.state is MigrationState.DONE, made.reason
    [cp] = (await listed(cluster, "db")).checkpoints
    assert (cp.name, cp.memory, cp.size) == ("one", True, 256 * 1024 * 1024)
    [said] = await cluster.event_list("checkpoint.created", "vm/db")
    assert "created checkpoint 'one' with its memory on n1" in said.reason

    disk.write_bytes(b"state 2")
    assert (await run_op(cluster, "db", _A.REVERT, "one")).state is MigrationState.DONE
    assert disk.read_bytes() == b"state 1"
    missing = await run_op(cluster, "db", _A.REVERT, "two")
    assert missing.state is MigrationState.FAILED
    assert missing.reason == "vm db has no checkpoint 'two'"
    assert await cluster.event_list("checkpoint.failed", "vm/db")

    await cluster.crash("n1")
    assert await cluster.wait_running("db", timeout=20, not_on="n1") == "n2"
    assert [c.name for c in (await listed(cluster, "db")).checkpoints] == ["one"]
    disk.write_bytes(b"state 3")
    back = await run_op(cluster, "db", _A.REVERT, "one")
    assert (back.state, back.node) == (MigrationState.DONE, "n2"), back.reason
    assert disk.read_bytes() == b"state 1"
    assert (await run_op(cluster, "db", _A.DELETE, "one")).state is MigrationState.DONE
    assert (await listed(cluster, "db")).checkpoints == ()


async def test_an_old_finished_op_of_a_node_gone_for_good_is_pruned(cluster: SimCluster) -> None:
    """Finished operations go after RETAIN_S, whichever node ran them: one of a node removed
    since has no agent of its own to remove it."""
    await cluster.start("n1")
    op = await create_op(cluster.store, cluster.keys, "db", "gone", 0, _A.CREATE, "x", "test")
    assert op is not None
    assert cluster.clock is not None
    old = cluster.clock.wall() - RETAIN_S - 60  # on the cluster's (virtual) clock
    ended = op.model_copy(update={"state": MigrationState.FAILED, "created": old, "updated": old})
    await cluster.store.put(cluster.keys.checkpoint_op(op.id), encode(ended))

    async def pruned() -> bool:
        return await cluster.store.get(cluster.keys.checkpoint_op(op.id)) is None

    await cluster.wait_for(pruned, 10, "the old operation of node gone to be pruned")
    assert await cluster.store.get(cluster.keys.job("db")) is None, "its job key with it"
