"""One job per VM (``jobs/<vm>``) on both backends: concurrent creators of migrations and
storage moves, exactly one commits; the transaction that ends a record frees the VM; a key
whose record is final or missing is found stale and cleared only as it was read."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hvcluster.models.base import encode
from hvcluster.models.job import Job, job_of
from hvcluster.models.lifecycle import MigrationState
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.models.vm import Placement
from hvcluster.store.jobs import busy, clear, stale
from hvcluster.store.migrations import change_migration, create_migration, create_move, flip
from tests.store.conftest import Harness

_M = MigrationState


async def test_concurrent_creators_exactly_one_commits(h: Harness) -> None:
    s, k = h.store, h.keys
    made = await asyncio.gather(
        *(create_migration(s, k, "web", "n1", "n2", 3, MigrationKind.LIVE, "a") for _ in range(4)),
        *(create_move(s, k, "web", "n1", 3, "vol", "b") for _ in range(4)),
    )
    won = [m for m in made if m is not None]
    assert len(won) == 1
    what = "storage move" if won[0].kind is MigrationKind.STORAGE else "live migration"
    assert await busy(s, k, "web") == f"vm web is already moving ({what} {won[0].id}, requested)"
    assert await busy(s, k, "db") is None  # another VM is free


def to(state: MigrationState) -> Callable[[Migration], Migration]:
    return lambda cur: cur.model_copy(update={"state": state})


async def test_ending_a_record_frees_the_vm(h: Harness) -> None:
    s, k = h.store, h.keys
    move = await create_move(s, k, "web", "n1", 3, "vol", "t")
    assert move is not None

    assert await change_migration(s, k, move.id, to(_M.FAILED), storage=True) is not None
    assert await s.get(k.job("web")) is None
    # a live migration then, ended by the flip
    for name in ("n1", "n2"):
        await s.put(k.alive(name), b"{}")
    await s.put(k.vm("web"), b"{}")
    await s.put(k.placement("web"), encode(Placement(node="n1", epoch=3)))
    rec = await create_migration(s, k, "web", "n1", "n2", 3, MigrationKind.LIVE, "t")
    assert rec is not None and await s.get(k.job("web")) is not None

    for state in (_M.PREPARING, _M.TRANSFERRING):
        assert await change_migration(s, k, rec.id, to(state)) is not None
    assert await s.get(k.job("web")) is not None  # still under way
    rkv, pkv = await s.get(k.migration(rec.id)), await s.get(k.placement("web"))
    assert rkv is not None and pkv is not None
    live = rec.model_copy(update={"state": _M.TRANSFERRING})
    done = await flip(s, k, live, rkv.mod_revision, Placement(node="n1", epoch=3), pkv.mod_revision)
    assert done is not None and done.state is _M.DONE
    assert await s.get(k.job("web")) is None


async def test_a_stale_key_is_found_and_cleared_only_as_read(h: Harness) -> None:
    s, k = h.store, h.keys
    rec = await create_migration(s, k, "web", "n1", "n2", 3, MigrationKind.LIVE, "t")
    assert rec is not None
    assert await stale(s, k) == []  # its record is active
    # the record ended by other means than its transactions: the key is left behind
    await s.put(k.migration(rec.id), encode(rec.model_copy(update={"state": _M.CANCELLED})))
    await s.put(k.job("db"), encode(Job(id="db-1", vm="db", record="migration", what="x")))
    found = {kv.key: (job, r) for kv, job, r in await stale(s, k)}
    assert found[k.job("web")] == (job_of(rec), rec.model_copy(update={"state": _M.CANCELLED}))
    assert found[k.job("db")][1] is None  # its record is missing
    kvs = {kv.key: kv for kv, _, _ in await stale(s, k)}
    await s.put(k.job("db"), encode(Job(id="db-2", vm="db", record="migration", what="x")))
    assert not await clear(s, kvs[k.job("db")])  # rewritten since it was read: kept
    assert await clear(s, kvs[k.job("web")])
    assert await s.get(k.job("web")) is None
