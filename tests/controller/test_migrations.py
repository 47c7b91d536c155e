"""The migration coordinator on a memory store: bad requests fail with the reason, the flip
is one transaction, old finished records are pruned."""

from __future__ import annotations

import time

from hvcluster.controller.migrations import MigrationCoordinator
from hvcluster.controller.notes import ControllerNotes
from hvcluster.models.base import decode, encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.lifecycle import MigrationState, VMState
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.models.node import Capacity, Node, NodeAlive
from hvcluster.models.vm import Placement, VMSpec, VMStatus
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from hvcluster.store.migrations import create_migration, flip

KEYS = Keys("c")
_M = MigrationState


async def node(store: MemoryStore, name: str, alive: bool = True) -> None:
    n = Node(name=name, address="127.0.0.1", capacity=Capacity(cpus=4, memory_mib=4096))
    await store.put(KEYS.node(name), encode(n))
    if alive:
        lease = await store.grant(30)
        beat = NodeAlive(node=name, lease=lease.id, since=time.time())
        await store.put(KEYS.alive(name), encode(beat), lease=lease.id)


async def vm_on(store: MemoryStore, name: str, where: str, epoch: int = 1) -> None:
    await store.put(KEYS.vm(name), encode(VMSpec(name=name, memory_mib=128)))
    await store.put(KEYS.placement(name), encode(Placement(node=where, epoch=epoch)))
    status = VMStatus(vm=name, node=where, epoch=epoch, state=VMState.RUNNING, since=1.0)
    await store.put(KEYS.status(name), encode(status))


async def record(store: MemoryStore, mid: str) -> Migration | None:
    kv = await store.get(KEYS.migration(mid))
    return decode(Migration, kv.key, kv.value) if kv else None


def coordinator(
    store: MemoryStore, said: list[str], now: float | None = None
) -> MigrationCoordinator:
    async def say(kind: str, subject: str, reason: str) -> None:
        said.append(f"{kind} {reason}")

    clock = (lambda: now) if now is not None else time.time
    return MigrationCoordinator(store, KEYS, say, ControllerNotes(started=0.0), lambda: True, clock)


async def test_requests_are_prepared_or_failed_with_the_reason(store: MemoryStore) -> None:
    await node(store, "n1")
    await node(store, "n2")
    await node(store, "gone", alive=False)
    await vm_on(store, "a", "n1")
    await vm_on(store, "b", "n1")
    await vm_on(store, "c", "n1")
    ok = await create_migration(store, KEYS, "a", "n1", "", 1, MigrationKind.LIVE, "test")
    dead = await create_migration(store, KEYS, "b", "n1", "gone", 1, MigrationKind.LIVE, "test")
    stale = await create_migration(store, KEYS, "c", "n1", "n2", 7, MigrationKind.LIVE, "test")
    assert ok and dead and stale
    said: list[str] = []
    await coordinator(store, said).cycle()
    a, b, c = [await record(store, m.id) for m in (ok, dead, stale)]
    assert a is not None and (a.state, a.target) == (_M.PREPARING, "n2")
    assert b is not None and b.state is _M.FAILED and "gone is not alive" in b.reason
    assert c is not None and c.state is _M.FAILED and "epoch 1" in c.reason
    assert any("failed" in s for s in said)


async def test_the_flip_moves_placement_and_record_together(store: MemoryStore) -> None:
    await node(store, "n1")
    await node(store, "n2")
    await vm_on(store, "a", "n1", epoch=4)
    rec = await create_migration(store, KEYS, "a", "n1", "n2", 4, MigrationKind.LIVE, "test")
    assert rec is not None
    switching = rec.model_copy(update={"state": _M.SWITCHING, "transfer_downtime_ms": 3.0})
    await store.put(KEYS.migration(rec.id), encode(switching))
    await coordinator(store, []).cycle()
    done = await record(store, rec.id)
    kv = await store.get(KEYS.placement("a"))
    assert kv is not None and done is not None
    p = decode(Placement, kv.key, kv.value)
    assert (p.node, p.epoch, done.state) == ("n2", 5, _M.DONE)
    assert done.id in p.reason


async def test_the_flip_writes_nothing_when_anything_compared_changed(
    store: MemoryStore,
) -> None:
    """store.migrations.flip, as the source agent runs it from transferring: a record or
    placement that moved since it was read, a dead target: nothing written."""
    await node(store, "n1")
    await node(store, "n2")
    await node(store, "n3", alive=False)
    await vm_on(store, "a", "n1", epoch=2)
    rec = await create_migration(store, KEYS, "a", "n1", "n2", 2, MigrationKind.LIVE, "test")
    assert rec is not None
    moving = rec.model_copy(update={"state": _M.TRANSFERRING})
    rkey, pkey = KEYS.migration(rec.id), KEYS.placement("a")
    rrev = await store.put(rkey, encode(moving))
    pkv = await store.get(pkey)
    assert pkv is not None
    placed = decode(Placement, pkv.key, pkv.value)

    async def attempt(r: Migration, rev: int, prev: int) -> Migration | None:
        return await flip(store, KEYS, r, rev, placed, prev, transfer_downtime_ms=4.0)

    assert await attempt(moving, rrev - 1, pkv.mod_revision) is None  # record moved
    assert await attempt(moving, rrev, pkv.mod_revision - 1) is None  # placement moved
    to_dead = moving.model_copy(update={"target": "n3"})
    assert await attempt(to_dead, await store.put(rkey, encode(to_dead)), pkv.mod_revision) is None
    rrev = await store.put(rkey, encode(moving))
    assert (await record(store, rec.id)) == moving  # nothing of the above was written
    done = await attempt(moving, rrev, pkv.mod_revision)
    assert done is not None and (done.state, done.transfer_downtime_ms) == (_M.DONE, 4.0)
    kv = await store.get(pkey)
    assert kv is not None
    p = decode(Placement, kv.key, kv.value)
    assert (p.node, p.epoch) == ("n2", 3) and await record(store, rec.id) == done


async def test_old_finished_records_are_pruned(store: MemoryStore) -> None:
    now = time.time()
    old = Migration(
        id="old-1", vm="a", source="n1", target="n2", state=_M.DONE, created=1.0, updated=1.0
    )
    new = old.model_copy(update={"id": "new-1", "created": now, "updated": now})
    for m in (old, new):
        await store.put(KEYS.migration(m.id), encode(m))
    await coordinator(store, [], now=1.0 + ClusterConfig().migration_retention_s + 1).cycle()
    assert await record(store, "old-1") is None
    assert await record(store, "new-1") is not None
