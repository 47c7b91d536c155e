"""Job records: migrations (``migrations/<id>``) and storage moves
(``requests/storage-moves/<id>``), both :class:`~hvcluster.models.migration.Migration`.

A migration record has several writers (the API creates and cancels it, the controller moves
it to preparing and fails it, the target agent writes its address, the source agent moves it
to transferring, publishes progress and flips it to done on completion, or to switching for the
controller to flip). A storage move (kind ``storage``: a running VM's disks moved to the
volume ``volume`` on the node that runs it, source and target both that node) lives apart
because nothing but the owning agent acts on it. Every change is a compare-and-set on the
record's mod revision, re-decided on a lost race, and every state change is checked against
:data:`~hvcluster.models.lifecycle.MIGRATION_LIFECYCLE`. A record is created with its VM's job
key and the change that ends it releases the key (store/jobs.py).

:func:`flip` is the one transaction that ends a migration: the placement to the target at
epoch + 1 and the record done, written by the source agent the moment its transfer completes
(or by the controller, from ``switching``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Concatenate, ParamSpec

from hvcluster.models.base import encode
from hvcluster.models.errors import CorruptValue
from hvcluster.models.job import flipped_placement, new_id
from hvcluster.models.lifecycle import MIGRATION_LIFECYCLE, MigrationState
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.models.storage import spec_on_volume
from hvcluster.models.vm import Placement, VMSpec
from hvcluster.store.base import Compare, Delete, Put, Store
from hvcluster.store.batches import Write, commit_all
from hvcluster.store.jobs import ATTEMPTS as ATTEMPTS  # the controller's too
from hvcluster.store.jobs import change_job, claim, release
from hvcluster.store.keys import Keys
from hvcluster.store.reads import (
    Decoded,
    read_kind,
    read_one_or_error,
    read_prefix,
    read_value,
)

Change = Callable[[Migration], Migration | None]
P = ParamSpec("P")


async def read_migrations(store: Store, keys: Keys) -> Decoded[Migration]:
    return await read_kind(store, keys, "migrations", Migration)


async def read_moves(store: Store, keys: Keys) -> Decoded[Migration]:
    """Every storage move by id (unreadable ones reported and skipped)."""
    return await read_prefix(store, keys.storage_move(), Migration)


async def read_move(store: Store, keys: Keys, mid: str) -> Migration | None:
    return await read_value(store, keys.storage_move(mid), Migration)


def new_migration(
    keys: Keys,
    vm: str,
    source: str,
    target: str,
    epoch: int,
    kind: MigrationKind,
    requested_by: str,
    volume: str = "",
    now: float | None = None,
    max_bandwidth_mib_s: int | None = None,
) -> tuple[Migration, Write]:
    """A new ``requested`` record and the :class:`~hvcluster.store.batches.Write` that
    creates it with its VM's job key (store/jobs.py): it commits only while no record has
    its id and no other job holds the VM. ``volume``: a shared-nothing migration's
    destination volume, or a storage move's (kind ``storage``: stored under
    ``requests/storage-moves/``). ``max_bandwidth_mib_s``: a live migration's own cap."""
    # the caller's clock: ids made of it (a simulation's replay); else random ones
    made_of = () if now is None else (source, target, epoch, kind.value, requested_by, volume, now)
    now = time.time() if now is None else now
    rec = Migration(
        id=new_id(vm, *made_of),
        vm=vm,
        source=source,
        target=target,
        kind=kind,
        epoch=epoch,
        created=now,
        updated=now,
        requested_by=requested_by,
        volume=volume,
        max_bandwidth_mib_s=max_bandwidth_mib_s,
    )
    key = keys.storage_move(rec.id) if kind is MigrationKind.STORAGE else keys.migration(rec.id)
    held, hold = claim(keys, rec)
    return rec, Write((Compare.absent(key), *held), (Put(key, encode(rec)), *hold))


async def create_migrations(
    store: Store, made: Sequence[tuple[Migration, Write]]
) -> list[Migration | None]:
    """Store many :func:`new_migration` s in as few transactions as etcd's limits allow
    (:func:`~hvcluster.store.batches.commit_all`: a drain's or a balance wave's moves
    together), each with its own compares; for each, its record, or None if another job
    holds its VM."""
    done = await commit_all(store, [w for _, w in made])
    return [rec if ok else None for (rec, _), ok in zip(made, done, strict=True)]


def _alone(
    make: Callable[P, tuple[Migration, Write]],
) -> Callable[Concatenate[Store, P], Awaitable[Migration | None]]:
    async def create(store: Store, /, *args: P.args, **kwargs: P.kwargs) -> Migration | None:
        return (await create_migrations(store, [make(*args, **kwargs)]))[0]

    return create


# create_migration(store, <new_migration's arguments>): one new record in its own
# transaction; None if another job holds the VM (store.jobs.busy says which)
create_migration = _alone(new_migration)


async def create_move(
    store: Store, keys: Keys, vm: str, node: str, epoch: int, volume: str, requested_by: str
) -> Migration | None:
    """A new storage move of ``vm``'s disks to ``volume`` on ``node`` (see
    :func:`create_migration`)."""
    kind = MigrationKind.STORAGE
    return await create_migration(store, keys, vm, node, node, epoch, kind, requested_by, volume)


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
    storage: bool = False,
    now: float | None = None,
) -> Migration | None:
    """:func:`change_record` of the migration ``mid`` (``storage``: of the storage move
    ``mid``), the record written alone."""
    key = keys.storage_move(mid) if storage else keys.migration(mid)
    written = await change_record(store, keys, key, change, compares, ops, attempts, now)
    return written[0] if written is not None else None


async def change_record(
    store: Store,
    keys: Keys,
    key: str,
    change: Change,
    compares: Sequence[Compare] = (),
    ops: Sequence[Put | Delete] = (),
    attempts: int = ATTEMPTS,
    now: float | None = None,
) -> tuple[Migration, int] | None:
    """:func:`~hvcluster.store.jobs.change_job` of the migration or storage move at
    ``key``."""
    return await change_job(store, keys, Migration, key, change, compares, ops, attempts, now)


async def flip(
    store: Store,
    keys: Keys,
    rec: Migration,
    record_rev: int,
    placement: Placement,
    placement_rev: int,
    extra: tuple[Sequence[Compare], Sequence[Put]] = ((), ()),
    now: float | None = None,
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
    done = rec.model_copy(
        update={
            **fields,
            "state": MigrationState.DONE,
            "updated": time.time() if now is None else now,
        }
    )
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


async def moved_spec_ops(
    store: Store, keys: Keys, rec: Migration
) -> tuple[list[Compare], list[Put]]:
    """A shared-nothing migration's part of its flip: the VM's spec with every disk on
    ``rec.volume``, compared on the spec's revision as read now (a spec changed meanwhile
    fails the flip). Nothing for any other migration."""
    if not rec.volume or rec.kind is MigrationKind.STORAGE:
        return [], []
    key = keys.vm(rec.vm)
    found = await read_one_or_error(store, key, VMSpec)
    if found is None:
        return [Compare.present(key)], []  # the flip fails: the VM is gone
    if isinstance(found, CorruptValue):
        return [Compare.absent(key)], []  # the flip fails: the spec is unreadable
    spec = spec_on_volume(found.value, rec.volume)
    return [Compare.mod_is(key, found.mod_revision)], [Put(key, encode(spec))]


async def named_disks(store: Store, keys: Keys) -> set[tuple[str | None, str]]:
    """(volume, path) of every disk some VM's spec names: files never deleted as leftovers."""
    specs = await read_kind(store, keys, "vms", VMSpec)
    return {(d.volume, d.path) for spec in specs.values() for d in spec.disks}
