"""Checkpoint operations (``requests/checkpoints/<id>``) and what each VM's disks hold
(``checkpoints/<vm>``); see :mod:`hvcluster.models.checkpoint`.

An operation is created with its VM's job key (store/jobs.py) in one transaction, so it
never runs with a migration or storage move of that VM, and the change that ends it (done
or failed) deletes the key in the same transaction. Only the agent of its node acts on it;
the controller fails one whose VM was placed elsewhere since (controller/jobs.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from hvcluster.models.base import encode
from hvcluster.models.checkpoint import (
    CheckpointAction,
    CheckpointList,
    CheckpointOp,
)
from hvcluster.models.event import Say
from hvcluster.models.job import new_id
from hvcluster.models.lifecycle import MigrationState
from hvcluster.models.vm import VMSpec, same_vm
from hvcluster.store.base import Compare, Delete, Put, Store
from hvcluster.store.jobs import change_job, claim
from hvcluster.store.keys import Keys
from hvcluster.store.reads import Decoded, read_prefix, read_value

OpChange = Callable[[CheckpointOp], CheckpointOp | None]


async def create_op(
    store: Store,
    keys: Keys,
    vm: str,
    node: str,
    epoch: int,
    action: CheckpointAction,
    name: str,
    requested_by: str,
    compares: Sequence[Compare] = (),
) -> CheckpointOp | None:
    """A new ``requested`` operation with the VM's job key; None if another job holds it
    (or ``compares``, of the same transaction, fail)."""
    now = time.time()
    op = CheckpointOp(
        id=new_id(vm), vm=vm, node=node, epoch=epoch, action=action, name=name,
        created=now, updated=now, requested_by=requested_by,
    )  # fmt: skip
    key = keys.checkpoint_op(op.id)
    held, hold = claim(keys, op)
    guard = [Compare.absent(key), *held, *compares]
    result = await store.txn(guard, [Put(key, encode(op)), *hold])
    return op if result.succeeded else None


async def read_op(store: Store, keys: Keys, oid: str) -> CheckpointOp | None:
    return await read_value(store, keys.checkpoint_op(oid), CheckpointOp)


async def read_ops(store: Store, keys: Keys) -> Decoded[CheckpointOp]:
    return await read_prefix(store, keys.checkpoint_op(), CheckpointOp)


async def read_list(store: Store, keys: Keys, spec: VMSpec) -> CheckpointList:
    """What the disks of VM ``spec`` hold, as its agent last wrote it (nothing: the list
    of an older VM of that name, deleted since, is not this one's)."""
    found = await read_value(store, keys.checkpoints(spec.name), CheckpointList)
    if found is None or not same_vm(spec, found.uid):
        return CheckpointList(vm=spec.name, uid=spec.uid)
    return found


async def lost_by_copy(store: Store, keys: Keys, spec: VMSpec, what: str) -> str | None:
    """Why ``what`` (a storage move, a shared-nothing migration: a block mirror onto a new
    file) is refused for VM ``spec``: QEMU's mirror copies each disk's current state only, so its
    checkpoints would be lost. None when it has none."""
    vm = spec.name
    found = await read_list(store, keys, spec)
    if not found.checkpoints:
        return None
    names = ", ".join(c.name for c in found.checkpoints)
    return (
        f"vm {vm} has checkpoints ({names}): {what} copies each disk's current state only "
        "(QEMU's block mirror drops internal snapshots), so they would be lost; delete them "
        "first (hvc vm checkpoint rm)"
    )


def list_put(keys: Keys, found: CheckpointList) -> Put:
    return Put(keys.checkpoints(found.vm), encode(found))


async def change_op(
    store: Store, keys: Keys, oid: str, change: OpChange, ops: Sequence[Put | Delete] = ()
) -> CheckpointOp | None:
    """:func:`~hvcluster.store.jobs.change_job` of operation ``oid``, with ``ops`` in the
    same transaction (the change that ends it releases its VM's job key). None: declined,
    or gone."""
    written = await change_job(store, keys, CheckpointOp, keys.checkpoint_op(oid), change, ops=ops)
    return written[0] if written is not None else None


async def fail_op(store: Store, keys: Keys, say: Say, op: CheckpointOp, why: str) -> None:
    """Fail ``op`` (if still under way) with ``why``, and say so."""

    def fail(cur: CheckpointOp) -> CheckpointOp | None:
        if not cur.active:
            return None
        return cur.model_copy(update={"state": MigrationState.FAILED, "reason": why})

    if await change_op(store, keys, op.id, fail) is not None:
        await say("checkpoint.failed", f"vm/{op.vm}", f"{op.what} of vm {op.vm} failed: {why}")
