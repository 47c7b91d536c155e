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

from hvcluster.models.base import encode
from hvcluster.models.checkpoint import CheckpointOp
from hvcluster.models.job import Job, job_of
from hvcluster.models.migration import Migration
from hvcluster.store.base import Compare, Delete, KeyValue, Put, Store
from hvcluster.store.keys import Keys
from hvcluster.store.reads import decode_kv, read_value

Record = Migration | CheckpointOp


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
