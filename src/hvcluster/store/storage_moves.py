"""Storage move records (``requests/storage-moves/<id>``): a running VM's disks moved to
another volume on the node that runs it.

A record is a :class:`~hvcluster.models.migration.Migration` of kind ``storage`` whose source
and target are that node and whose ``volume`` is the destination. It lives apart from
``migrations/`` because nothing but the owning agent acts on it (the live-migration
coordinator and workers never see it). Its states follow
:data:`~hvcluster.models.lifecycle.MIGRATION_LIFECYCLE`: requested, preparing (the agent
accepted it), transferring (disks being copied), switching (the copy is complete; the spec
is about to name it), done (one transaction wrote the spec and the record), or failed /
cancelled. Every change is a compare-and-set on the record's mod revision.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from hvcluster.models.base import decode, encode
from hvcluster.models.errors import CorruptValue
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.models.storage import spec_on_volume
from hvcluster.models.vm import VMSpec
from hvcluster.store.base import Compare, Delete, Put, Store
from hvcluster.store.keys import Keys
from hvcluster.store.migrations import change_record, new_id, store_new

PREFIX = "storage-moves/"

Change = Callable[[Migration], Migration | None]


def move_key(keys: Keys, mid: str) -> str:
    return keys.request(PREFIX + mid)


def moves_prefix(keys: Keys) -> str:
    return keys.request(PREFIX)


async def read_moves(store: Store, keys: Keys) -> dict[str, tuple[Migration, int]]:
    """Every readable record by id, with its mod revision (unreadable ones are skipped)."""
    found = await store.range(moves_prefix(keys))
    out: dict[str, tuple[Migration, int]] = {}
    for kv in found.kvs:
        try:
            rec = decode(Migration, kv.key, kv.value)
        except CorruptValue:
            continue
        out[rec.id] = (rec, kv.mod_revision)
    return out


async def read_move(store: Store, keys: Keys, mid: str) -> Migration | None:
    kv = await store.get(move_key(keys, mid))
    if kv is None:
        return None
    try:
        return decode(Migration, kv.key, kv.value)
    except CorruptValue:
        return None


async def create_move(
    store: Store, keys: Keys, vm: str, node: str, epoch: int, volume: str, requested_by: str
) -> Migration | None:
    """Store a new ``requested`` storage move, with the VM's job key (store/jobs.py) in the
    same transaction; None if another job holds the VM."""
    now = time.time()
    rec = Migration(
        id=new_id(vm),
        vm=vm,
        source=node,
        target=node,
        kind=MigrationKind.STORAGE,
        epoch=epoch,
        created=now,
        updated=now,
        requested_by=requested_by,
        volume=volume,
    )
    return await store_new(store, keys, move_key(keys, rec.id), rec)


async def change_move(
    store: Store,
    keys: Keys,
    mid: str,
    change: Change,
    compares: Sequence[Compare] = (),
    ops: Sequence[Put | Delete] = (),
) -> Migration | None:
    """Apply ``change`` under compare-and-set, with the caller's extra ``compares`` and
    ``ops`` in the same transaction. None when ``change`` declined, the record is gone, or
    one of the caller's compares failed; re-decided on a lost race on the record."""
    done = await change_record(store, keys, move_key(keys, mid), change, compares, ops)
    return done[0] if done else None


async def moved_spec_ops(
    store: Store, keys: Keys, rec: Migration
) -> tuple[list[Compare], list[Put]]:
    """A shared-nothing migration's part of its flip: the VM's spec with every disk on
    ``rec.volume``, compared on the spec's revision as read now (a spec changed meanwhile
    fails the flip). Nothing for any other migration."""
    if not rec.volume or rec.kind is MigrationKind.STORAGE:
        return [], []
    key = keys.vm(rec.vm)
    kv = await store.get(key)
    if kv is None:
        return [Compare.present(key)], []  # the flip fails: the VM is gone
    try:
        spec = spec_on_volume(decode(VMSpec, kv.key, kv.value), rec.volume)
    except CorruptValue:
        return [Compare.absent(key)], []  # the flip fails: the spec is unreadable
    return [Compare.mod_is(key, kv.mod_revision)], [Put(key, encode(spec))]


async def named_disks(store: Store, keys: Keys) -> set[tuple[str | None, str]]:
    """(volume, path) of every disk some VM's spec names: files never deleted as leftovers."""
    found = await store.range(keys.prefix("vms"))
    named: set[tuple[str | None, str]] = set()
    for kv in found.kvs:
        try:
            spec = decode(VMSpec, kv.key, kv.value)
        except CorruptValue:
            continue
        named |= {(d.volume, d.path) for d in spec.disks}
    return named
