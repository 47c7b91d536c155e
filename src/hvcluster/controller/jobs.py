"""The controller's care of job keys (``jobs/<vm>``, see :mod:`hvcluster.store.jobs`).

Every transaction that ends a record deletes its VM's job key, so a key outlives its record
only when the record was ended or removed by other means: such a stale key (its record
final, missing or unreadable) would block the VM for good. Each cycle this clears them,
compared on the key's revision, and says so (``job.cleared``).

A storage move (or a checkpoint operation) is carried out by its node's agent alone; when
that node is gone and the VM has failed over (or the VM was deleted), no agent will end
it: this fails it (which frees the VM's key) with the reason. Live migrations need no such
care: the migration coordinator fails them when their VM or nodes go.
"""

from __future__ import annotations

import logging

from hvcluster.models.checkpoint import CheckpointOp
from hvcluster.models.errors import CorruptValue
from hvcluster.models.event import Say
from hvcluster.models.lifecycle import MigrationState
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.models.vm import Placement
from hvcluster.store.base import Store
from hvcluster.store.checkpoints import fail_op
from hvcluster.store.jobs import clear, holder, stale
from hvcluster.store.keys import Keys
from hvcluster.store.migrations import change_migration
from hvcluster.store.reads import read_one_or_error

log = logging.getLogger(__name__)


async def sweep_jobs(store: Store, keys: Keys, say: Say) -> None:
    """Clear stale job keys and fail storage moves no agent will end (see the module doc)."""
    found = await store.range(keys.prefix("jobs"))
    if not found.kvs:
        return  # the usual case: one cheap read
    for kv, job, rec in await stale(store, keys):
        if not await clear(store, kv):
            continue
        vm = keys.name_of(kv.key, "jobs")
        if job is None:
            what = "an unreadable job key"
        else:
            state = rec.state.value if rec is not None else "missing"
            what = f"its job key, left by {job.what} {job.id} ({state})"
        await say("job.cleared", f"vm/{vm}", f"vm {vm}: cleared {what}; it may move again")
    for kv in found.kvs:
        vm = keys.name_of(kv.key, "jobs")
        held = await holder(store, keys, vm)
        if held is None or held[1] is None:
            continue
        rec = held[1]
        if isinstance(rec, CheckpointOp):
            if rec.active:
                why = await _orphaned_op(store, keys, rec)
                if why is not None:
                    await fail_op(store, keys, say, rec, why)
        elif rec.kind is MigrationKind.STORAGE and rec.active:
            why = await _orphaned(store, keys, rec.vm, rec.source, rec.epoch)
            if why is not None:
                await _fail_move(store, keys, say, rec, why)


async def _orphaned(store: Store, keys: Keys, vm: str, node: str, epoch: int) -> str | None:
    """Why no agent will end the job of ``vm`` run by ``node`` at ``epoch``, or None."""
    if await store.get(keys.vm(vm)) is None:
        return f"vm {vm} was deleted"
    found = await read_one_or_error(store, keys.placement(vm), Placement)
    if isinstance(found, CorruptValue):
        return None
    if found is None:
        return f"vm {vm} has no placement any more"
    placement = found.value
    if (placement.node, placement.epoch) != (node, epoch):
        return (
            f"vm {vm} is now placed on {placement.node} at epoch {placement.epoch}, not "
            f"on {node} where the job ran; it keeps the disks its spec names"
        )
    return None


async def _orphaned_op(store: Store, keys: Keys, op: CheckpointOp) -> str | None:
    """Why no agent will end checkpoint operation ``op``, or None. One on a placed VM is
    as a storage move; one on a stopped VM (epoch 0) is orphaned when its node is gone."""
    if op.epoch:
        return await _orphaned(store, keys, op.vm, op.node, op.epoch)
    if await store.get(keys.vm(op.vm)) is None:
        return f"vm {op.vm} was deleted"
    if await store.get(keys.alive(op.node)) is None:
        return f"node {op.node}, which was to do it, is not alive"
    return None


async def _fail_move(store: Store, keys: Keys, say: Say, rec: Migration, why: str) -> None:
    def fail(cur: Migration) -> Migration | None:
        if not cur.active:
            return None
        return cur.model_copy(update={"state": MigrationState.FAILED, "reason": why})

    if await change_migration(store, keys, rec.id, fail, storage=True) is not None:
        await say("storage.move_failed", f"vm/{rec.vm}", f"storage move {rec.id}: {why}")
