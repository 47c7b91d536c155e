"""One job per VM, enforced by the store: ``jobs/<vm>``.

A VM moves by one job at a time: a live, quick or shared-nothing migration
(``migrations/<id>``), a storage move (``requests/storage-moves/<id>``) or a checkpoint
operation (``requests/checkpoints/<id>``: QEMU cannot snapshot a VM that is moving). Reading "is
another job under way?" before creating a record leaves a gap (no compare can say "no
active record"), so the job key closes it:

* every creator writes the key (``Compare.absent``: create revision 0) in the SAME
  transaction that creates the record: of two concurrent creators exactly one commits;
* every transaction that ends a record (done, failed, cancelled; the flip; pruning of a
  record whose key still names it) deletes the key in that same transaction. While a
  record is active its key names it (both were written together, and only a final or
  missing record lets the controller clear a key), so an active record's end deletes the
  key without comparing its value;
* a key whose record is final or missing (a record written by other means, a bug) is
  stale: the controller clears it (:func:`stale`), compared on the key's revision, and says
  so in an event.

The key's value says which record holds the VM (:class:`Job`), so a refused creator can
name it: "vm web-1 is already moving (live migration web-1-3fa2, transferring)".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from hvcluster.models.base import encode
from hvcluster.models.checkpoint import CHECKPOINT_LIFECYCLE, CheckpointOp
from hvcluster.models.job import Job, job_of
from hvcluster.models.lifecycle import MIGRATION_LIFECYCLE
from hvcluster.models.migration import Migration
from hvcluster.store.base import Compare, Delete, KeyValue, Put, Store
from hvcluster.store.keys import Keys
from hvcluster.store.reads import decode_kv, read_one, read_value

Record = Migration | CheckpointOp
R = TypeVar("R", Migration, CheckpointOp)
ATTEMPTS = 10


def record_key(keys: Keys, job: Job) -> str:
    if job.record == "storage-move":
        return keys.storage_move(job.id)
    if job.record == "checkpoint":
        return keys.checkpoint_op(job.id)
    return keys.migration(job.id)


async def _record(store: Store, keys: Keys, job: Job) -> Record | None:
    if job.record == "checkpoint":
        return await read_value(store, record_key(keys, job), CheckpointOp)
    return await read_value(store, record_key(keys, job), Migration)


def claim(keys: Keys, rec: Record) -> tuple[list[Compare], list[Put]]:
    """The compare and write that make ``rec`` the VM's one job: with the record's own put,
    in one transaction (which fails if another job holds the VM)."""
    key = keys.job(rec.vm)
    return [Compare(key, "create", "==", 0)], [Put(key, encode(job_of(rec)))]


def release(keys: Keys, rec: Record) -> list[Delete]:
    """The write that frees the VM when its active ``rec`` ends (see the module doc)."""
    return [Delete(keys.job(rec.vm))]


async def change_job(
    store: Store,
    keys: Keys,
    model: type[R],
    key: str,
    change: Callable[[R], R | None],
    compares: Sequence[Compare] = (),
    ops: Sequence[Put | Delete] = (),
    attempts: int = ATTEMPTS,
    now: float | None = None,
) -> tuple[R, int] | None:
    """Apply ``change`` to the job record at ``key`` (a migration, a storage move, a
    checkpoint operation: ``model``) under compare-and-set, with the caller's ``compares``
    and ``ops`` in the same transaction; the VM's job key is released by the change that
    ends the record. Return the record written and its mod revision, or None when ``change``
    declined (returned None), the record is gone or unreadable, or the extra ``compares``
    failed. ``change`` is re-run on the fresh record after a lost race; an illegal state
    change raises :class:`~hvcluster.models.errors.IllegalTransition`."""
    lifecycle = CHECKPOINT_LIFECYCLE if model is CheckpointOp else MIGRATION_LIFECYCLE
    for _ in range(attempts):
        found = await read_one(store, key, model)
        if found is None:
            return None
        current = found.value
        new = change(current)
        if new is None:
            return None
        lifecycle.check(current.state, new.state)
        new = new.model_copy(update={"updated": time.time() if now is None else now})
        guard = [Compare.mod_is(key, found.mod_revision), *compares]
        ends: list[Delete] = release(keys, current) if current.active and not new.active else []
        result = await store.txn(guard, [Put(key, encode(new)), *ops, *ends])
        if result.succeeded:
            return new, result.revision
        if compares:
            # Did the record move, or one of the caller's compares fail? Re-check the record.
            again = await store.get(key)
            if again is not None and again.mod_revision == found.mod_revision:
                return None
    return None


def release_if_named(
    keys: Keys, rec: Record, kv: KeyValue | None
) -> tuple[list[Compare], list[Delete]]:
    """Pruning a final ``rec``: delete the job key too when it (as read: ``kv``) still names
    it, compared on its value; nothing otherwise."""
    if kv is None or _job(kv) != job_of(rec):
        return [], []
    return [Compare.value_is(kv.key, kv.value)], [Delete(kv.key)]


def _job(kv: KeyValue) -> Job | None:
    found = decode_kv(Job, kv)
    return found.value if found is not None else None


async def holder(store: Store, keys: Keys, vm: str) -> tuple[Job | None, Record | None] | None:
    """The job key of ``vm`` (None: no job) and the record it names (None: missing or
    unreadable); the job is None if the key itself is unreadable."""
    kv = await store.get(keys.job(vm))
    if kv is None:
        return None
    job = _job(kv)
    if job is None:
        return None, None
    return job, await _record(store, keys, job)


async def busy(store: Store, keys: Keys, vm: str) -> str | None:
    """Why ``vm`` cannot start another job now ("vm web-1 is already moving (live migration
    web-1-3fa2, transferring)"), or None when no job holds it."""
    found = await holder(store, keys, vm)
    if found is None:
        return None
    job, rec = found
    if job is None:
        return f"vm {vm} has an unreadable job key; the controller clears it, try again shortly"
    if rec is None or not rec.active:
        state = rec.state.value if rec is not None else "gone"
        return (
            f"vm {vm} is held by {job.what} {job.id} ({state}) that did not release it; "
            f"the controller clears it, try again shortly"
        )
    if isinstance(rec, CheckpointOp):
        return f"vm {vm} is busy with {job.what} ({job.id}, {rec.state.value})"
    return f"vm {vm} is already moving ({job.what} {job.id}, {rec.state.value})"


async def stale(store: Store, keys: Keys) -> list[tuple[KeyValue, Job | None, Record | None]]:
    """Job keys whose record is final, missing or unreadable (or that are unreadable
    themselves), with what they name: the controller clears them."""
    found = await store.range(keys.prefix("jobs"))
    out = []
    for kv in found.kvs:
        job = _job(kv)
        rec = None
        if job is not None:
            rec = await _record(store, keys, job)
        if job is None or rec is None or not rec.active:
            out.append((kv, job, rec))
    return out


async def clear(store: Store, kv: KeyValue) -> bool:
    """Delete a stale job key as it was read (not if it changed since)."""
    result = await store.txn([Compare.mod_is(kv.key, kv.mod_revision)], [Delete(kv.key)])
    return result.succeeded
