"""One job per VM in an in-process cluster: the job key (``jobs/<vm>``) is taken with the
record and freed by the transaction that ends it (the flip, a failure), concurrent creators
get exactly one record, and a stale key or an orphaned storage move is cleared by the
controller."""

from __future__ import annotations

import asyncio
import time

import pytest

from hvcluster.models.base import decode, encode
from hvcluster.models.job import Job, job_of
from hvcluster.models.lifecycle import MigrationState
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.store.migrations import create_migration, create_move, read_move
from tests.sim.cluster import SimCluster
from tests.sim.moves import record, wait_state

pytestmark = pytest.mark.timeout(60)
_M = MigrationState


async def job(cluster: SimCluster, vm: str) -> Job | None:
    kv = await cluster.store.get(cluster.keys.job(vm))
    return decode(Job, kv.key, kv.value) if kv is not None else None


async def test_concurrent_creators_one_record_and_the_key_freed_by_the_flip(
    cluster: SimCluster,
) -> None:
    await cluster.add_volume("csv")  # should the quick move win: its state goes there
    await cluster.start("n1", "n2")
    await cluster.create_vm("web", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("web") == "n1"
    placement = await cluster.placement("web")
    assert placement is not None
    s, k = cluster.store, cluster.keys
    made = await asyncio.gather(
        create_migration(s, k, "web", "n1", "n2", placement.epoch, MigrationKind.LIVE, "a"),
        create_migration(s, k, "web", "n1", "", placement.epoch, MigrationKind.QUICK, "b"),
        create_move(s, k, "web", "n1", placement.epoch, "vol", "c"),
        create_migration(s, k, "web", "n1", "n2", placement.epoch, MigrationKind.LIVE, "d"),
    )
    won = [m for m in made if m is not None]
    assert len(won) == 1
    assert await job(cluster, "web") == job_of(won[0])
    if won[0].kind is MigrationKind.STORAGE:  # (the sim host has no volume "vol": it fails)
        rec = await read_move(s, k, won[0].id)
        assert rec is not None
    else:
        done = await wait_state(cluster, won[0].id, _M.DONE, _M.FAILED)
        assert done.state is _M.DONE, done.reason
    # the transaction that ended it freed the VM: the next job is accepted
    await cluster.wait_for(lambda: _no_job(cluster, "web"), 20, "the job key freed")
    placement = await cluster.placement("web")
    assert placement is not None
    again = await create_migration(
        s, k, "web", placement.node, "", placement.epoch, MigrationKind.LIVE, "e"
    )
    assert again is not None
    done = await wait_state(cluster, again.id, _M.DONE, _M.FAILED)
    assert done.state is _M.DONE, done.reason
    assert await job(cluster, "web") is None  # the flip deleted it in its own transaction


async def _no_job(cluster: SimCluster, vm: str) -> bool:
    return await job(cluster, vm) is None


async def test_a_failed_migration_frees_the_vm(cluster: SimCluster) -> None:
    await cluster.start("n1", "n2")
    await cluster.create_vm("web", ha={"possible_owners": ["n1"]})
    assert await cluster.wait_running("web") == "n1"
    placement = await cluster.placement("web")
    assert placement is not None
    rec = await create_migration(
        cluster.store, cluster.keys, "web", "n1", "n2", placement.epoch, MigrationKind.LIVE, "t"
    )
    assert rec is not None
    failed = await wait_state(cluster, rec.id, _M.FAILED, _M.DONE)
    assert failed.state is _M.FAILED  # n2 is not a possible owner: the controller fails it
    assert await job(cluster, "web") is None


async def test_a_stale_job_key_is_cleared_by_the_controller(cluster: SimCluster) -> None:
    await cluster.start("n1", "n2")
    await cluster.create_vm("web")
    await cluster.wait_running("web")
    # a record ended by other means than its transactions (its key left behind)
    old = Migration(
        id="web-old",
        vm="web",
        source="n1",
        target="n2",
        state=_M.FAILED,
        created=time.time(),
        updated=time.time(),
    )
    await cluster.store.put(cluster.keys.migration(old.id), encode(old))
    await cluster.store.put(cluster.keys.job("web"), encode(job_of(old)))
    gone = Job(id="db-gone", vm="db", record="storage-move", what="storage move")
    await cluster.store.put(cluster.keys.job("db"), encode(gone))  # its record is missing
    await cluster.wait_for(lambda: _no_job(cluster, "web"), 10, "web's stale key cleared")
    await cluster.wait_for(lambda: _no_job(cluster, "db"), 10, "db's stale key cleared")
    said = {e.subject: e.reason for e in await cluster.event_list("job.cleared")}
    assert said["vm/web"] == (
        "vm web: cleared its job key, left by live migration web-old (failed); it may move again"
    )
    assert "storage move db-gone (missing)" in said["vm/db"]
    assert (await record(cluster, "web-old")).state is _M.FAILED  # the record is untouched


async def test_a_storage_move_of_a_vm_placed_elsewhere_is_failed_by_the_controller(
    cluster: SimCluster,
) -> None:
    """Its node died mid-move and the VM failed over: no agent will end the move."""
    await cluster.start("n1", "n2")
    await cluster.create_vm("web")
    node = await cluster.wait_running("web")
    placement = await cluster.placement("web")
    assert placement is not None
    other = "n2" if node == "n1" else "n1"
    await cluster.crash(other)
    # a move on the other node, at an old epoch: as one left by a dead node's agent
    rec = await create_move(
        cluster.store, cluster.keys, "web", other, placement.epoch, "vol", "test"
    )
    assert rec is not None
    moving = rec.model_copy(update={"state": _M.TRANSFERRING})
    await cluster.store.put(cluster.keys.storage_move(rec.id), encode(moving))

    async def failed() -> Migration | None:
        got = await read_move(cluster.store, cluster.keys, rec.id)
        return got if got is not None and got.state is _M.FAILED else None

    ended: Migration = await cluster.wait_for(failed, 20, "the orphaned move failed")
    assert f"now placed on {node}" in ended.reason
    assert await job(cluster, "web") is None
