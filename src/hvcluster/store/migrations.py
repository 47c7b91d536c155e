"""Reading and changing migration records (``migrations/<id>``).

A record has several writers (the API creates and cancels it, the controller moves it to
preparing and fails it, the target agent writes its address, the source agent moves it to
transferring, publishes progress and flips it to done on completion, or to switching for the
controller to flip). Every change is a compare-and-set on the record's mod revision,
re-decided on a lost race, and every state change is checked against
:data:`~hvcluster.models.lifecycle.MIGRATION_LIFECYCLE`.

:func:`flip` is the one transaction that ends a migration: the placement to the target at
epoch + 1 and the record done, written by the source agent the moment its transfer completes
(or by the controller, from ``switching``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from hvcluster.models.base import decode, encode
from hvcluster.models.errors import CorruptValue
from hvcluster.models.lifecycle import MIGRATION_LIFECYCLE, MigrationState
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.models.vm import Placement
from hvcluster.store.base import Compare, Delete, Put, Store
from hvcluster.store.jobs import claim, release
from hvcluster.store.keys import Keys
from hvcluster.store.reads import Decoded, read_kind

ATTEMPTS = 10
TIMES_LOST = "downtime unknown: "  # a done record's reason when its source's measures are lost

Change = Callable[[Migration], Migration | None]


def new_id(vm: str) -> str:
    """A fresh record id: the VM's name and a random suffix, sortable by nothing."""
    return f"{vm}-{uuid.uuid4().hex[:10]}"


async def read_migrations(store: Store, keys: Keys) -> Decoded[Migration]:
    return await read_kind(store, keys, "migrations", Migration)


async def create_migration(
    store: Store,
    keys: Keys,
    vm: str,
    source: str,
    target: str,
    epoch: int,
    kind: MigrationKind,
    requested_by: str,
    volume: str = "",
) -> Migration | None:
    """Store a new ``requested`` record, with the VM's job key (store/jobs.py) in the same
    transaction; None if another job holds the VM (:func:`hvcluster.store.jobs.busy` says
    which). ``volume``: a shared-nothing migration's destination volume."""
    now = time.time()
    rec = Migration(
        id=new_id(vm),
        vm=vm,
        source=source,
        target=target,
        kind=kind,
        epoch=epoch,
        created=now,
        updated=now,
        requested_by=requested_by,
        volume=volume,
    )
    return await store_new(store, keys, keys.migration(rec.id), rec)


async def store_new(store: Store, keys: Keys, key: str, rec: Migration) -> Migration | None:
    """Store the new record ``rec`` (a migration or a storage move) at ``key`` with its VM's
    job key in the same transaction; None if the record or the job key exists already."""
    held, hold = claim(keys, rec)
    result = await store.txn([Compare.absent(key), *held], [Put(key, encode(rec)), *hold])
    return rec if result.succeeded else None


def active_for(migrations: Decoded[Migration], vm: str) -> Migration | None:
    """The migration of ``vm`` under way, if any (there is at most one)."""
    for stored in migrations.items.values():
        if stored.value.vm == vm and stored.value.active:
            return stored.value
    return None


async def change_migration(
    store: Store,
    keys: Keys,
    mid: str,
    change: Change,
    compares: Sequence[Compare] = (),
    ops: Sequence[Put | Delete] = (),
    attempts: int = ATTEMPTS,
) -> Migration | None:
    written = await change_record(store, keys, keys.migration(mid), change, compares, ops, attempts)
    return written[0] if written is not None else None


async def change_migration_at(
    store: Store,
    keys: Keys,
    mid: str,
    change: Change,
    compares: Sequence[Compare] = (),
    ops: Sequence[Put | Delete] = (),
    attempts: int = ATTEMPTS,
) -> tuple[Migration, int] | None:
    """:func:`change_migration`, also returning the record's new mod revision."""
    return await change_record(store, keys, keys.migration(mid), change, compares, ops, attempts)


async def change_record(
    store: Store,
    keys: Keys,
    key: str,
    change: Change,
    compares: Sequence[Compare] = (),
    ops: Sequence[Put | Delete] = (),
    attempts: int = ATTEMPTS,
) -> tuple[Migration, int] | None:
    """Apply ``change`` to the record at ``key`` (a migration or a storage move) under
    compare-and-set, with the caller's ``compares`` and ``ops`` in the same transaction; the
    VM's job key is released by the change that ends the record. Return the record written
    and its mod revision, or None when ``change`` declined (returned None), the record is
    gone or unreadable, or the extra ``compares`` failed. ``change`` is re-run on the fresh
    record after a lost race; an illegal state change raises
    :class:`~hvcluster.models.errors.IllegalTransition`."""
    for _ in range(attempts):
        kv = await store.get(key)
        if kv is None:
            return None
        try:
            current = decode(Migration, kv.key, kv.value)
        except CorruptValue:
            return None
        new = change(current)
        if new is None:
            return None
        MIGRATION_LIFECYCLE.check(current.state, new.state)
        new = new.model_copy(update={"updated": time.time()})
        guard = [Compare.mod_is(key, kv.mod_revision), *compares]
        ends = release(keys, current) if current.active and not new.active else []
        result = await store.txn(guard, [Put(key, encode(new)), *ops, *ends])
        if result.succeeded:
            return new, result.revision
        if compares:
            # Did the record move, or one of the caller's compares fail? Re-check the record.
            again = await store.get(key)
            if again is not None and again.mod_revision == kv.mod_revision:
                return None
    return None


def flipped_placement(rec: Migration, current: Placement) -> Placement:
    """Where ``rec`` puts its VM when it ends: its target, at the next epoch."""
    verb = "migrated live" if rec.kind is MigrationKind.LIVE else "moved by quick migration"
    return Placement(
        node=rec.target,
        epoch=current.epoch + 1,
        reason=f"vm {rec.vm} {verb} from {rec.source} to {rec.target} (migration {rec.id})",
        failovers=current.failovers,
        uid=current.uid,
    )


async def flip(
    store: Store,
    keys: Keys,
    rec: Migration,
    record_rev: int,
    placement: Placement,
    placement_rev: int,
    extra: tuple[Sequence[Compare], Sequence[Put]] = ((), ()),
    **fields: Any,
) -> Migration | None:
    """The end of a migration in one transaction: the record (as it was at ``record_rev``)
    done, with ``fields``, and ``placement`` (as it was at ``placement_rev``: still the
    source's, at the record's epoch) flipped to the target at epoch + 1, if both nodes are
    alive and the VM still exists; the VM's job key goes with it. ``extra``: more compares
    and writes of the same transaction (a shared-nothing migration's spec with its new disk
    paths). Returns the record written, or None when anything compared has changed;
    nothing is written then."""
    MIGRATION_LIFECYCLE.check(rec.state, MigrationState.DONE)
    if (placement.node, placement.epoch) != (rec.source, rec.epoch):
        return None
    done = rec.model_copy(update={**fields, "state": MigrationState.DONE, "updated": time.time()})
    rkey, pkey = keys.migration(rec.id), keys.placement(rec.vm)
    compares = [
        Compare.mod_is(rkey, record_rev),
        Compare.mod_is(pkey, placement_rev),
        Compare.present(keys.alive(rec.target)),
        Compare.present(keys.alive(rec.source)),
        Compare.present(keys.vm(rec.vm)),
    ]
    new = flipped_placement(rec, placement)
    ops: list[Put | Delete] = [Put(rkey, encode(done)), Put(pkey, encode(new)), *extra[1]]
    ops += release(keys, rec)
    result = await store.txn([*compares, *extra[0]], ops)
    return done if result.succeeded else None


def with_times(rec: Migration) -> Migration:
    """``rec`` with ``downtime_ms`` and ``total_ms`` filled in once both halves are there:
    QEMU's part of the downtime (written by the source, or for a quick migration the save
    time) and the target's ``resumed_at``. Unchanged while either is missing."""
    stopped = rec.transfer_ms if rec.kind is MigrationKind.QUICK else rec.transfer_downtime_ms
    if stopped is None and rec.reason.startswith(TIMES_LOST) and rec.resumed_at:
        return rec.model_copy(update={"total_ms": (rec.resumed_at - rec.created) * 1000})
    if stopped is None or not rec.resumed_at or rec.downtime_ms is not None:
        return rec
    switch = (rec.resumed_at - rec.switching_at) * 1000
    return rec.model_copy(
        update={
            "downtime_ms": stopped + switch,
            "total_ms": (rec.resumed_at - rec.created) * 1000,
        }
    )


def source_times_lost(rec: Migration, why: str) -> Migration:
    """A done record whose source's measures of the transfer were lost (the agent that ran
    it went away before writing them): the downtime stays unknown, ``reason`` says why, and
    the total is filled from the target's ``resumed_at`` (now, or by :func:`with_times` when
    the target writes it later)."""
    return with_times(rec.model_copy(update={"reason": TIMES_LOST + why}))


def times_missing(rec: Migration) -> bool:
    """A done record still waiting for its source's measures of the transfer."""
    stopped = rec.transfer_ms if rec.kind is MigrationKind.QUICK else rec.transfer_downtime_ms
    return (
        rec.state is MigrationState.DONE
        and rec.switching_at > 0  # (every flip writes it)
        and stopped is None
        and rec.downtime_ms is None
        and not rec.reason.startswith(TIMES_LOST)
    )


def done_sentence(rec: Migration) -> str:
    """The ``migration.done`` event's words for a record :func:`with_times` completed."""
    transfer = rec.transfer_downtime_ms or 0.0
    switch = (rec.resumed_at - rec.switching_at) * 1000
    if rec.downtime_ms is None:
        total = f"{rec.total_ms:.0f} ms" if rec.total_ms is not None else "unknown"
        return (
            f"vm {rec.vm} moved from {rec.source} to {rec.target} by {rec.kind.value} "
            f"migration {rec.id}: {rec.reason or 'downtime unknown'}; total {total}"
        )
    return (
        f"vm {rec.vm} moved from {rec.source} to {rec.target} by {rec.kind.value} migration "
        f"{rec.id}: downtime {rec.downtime_ms or 0:.0f} ms (transfer {transfer:.0f} ms, "
        f"switch {switch:.0f} ms), total {rec.total_ms or 0:.0f} ms"
    )
