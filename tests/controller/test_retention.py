"""Finished migration and storage-move records, and the cluster log, are kept by count as
well as by age (the cluster config says how many and how long); records under way never go."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence

import pytest

from hvcluster.controller.migrations import MigrationCoordinator
from hvcluster.controller.notes import ControllerNotes
from hvcluster.controller.retention import Retention
from hvcluster.lab.etcd import EtcdCluster
from hvcluster.models.base import encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.errors import StoreError
from hvcluster.models.event import Event, Say
from hvcluster.models.job import job_of
from hvcluster.models.lifecycle import MigrationState, NodeAdminState
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.models.node import Capacity, Node
from hvcluster.store.base import Compare, Delete, Op, Put, TxnResult
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.events import EventLog
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from hvcluster.store.reads import Decoded
from hvcluster.store.retention import Prunable, prune
from tests.controller.test_migrations import record
from tests.etcd_fixtures import etcd_session

__all__ = ["etcd_session"]

KEYS = Keys("c")
_M = MigrationState
NOW = 1_000_000.0
DAY = 86400.0


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    s = MemoryStore(page_size=16)
    try:
        yield s
    finally:
        await s.close()


async def configure(store: MemoryStore, **settings: object) -> ClusterConfig:
    config = ClusterConfig(name="c").model_copy(update=settings)
    await store.put(KEYS.config, encode(config))
    return config


def migration(mid: str, age_s: float, state: _M = _M.DONE, **fields: object) -> Migration:
    at = NOW - age_s
    values: dict[str, object] = {"vm": mid, "source": "n1", "target": "n2"}
    values.update(fields)
    return Migration.model_validate(
        {**values, "id": mid, "state": state, "created": at, "updated": at}
    )


async def stored(store: MemoryStore, *recs: Migration) -> None:
    for rec in recs:
        await store.put(KEYS.migration(rec.id), encode(rec))


def coordinator(store: MemoryStore, said: list[str]) -> MigrationCoordinator:
    async def say(kind: str, subject: str, reason: str) -> None:
        said.append(f"{kind} {reason}")

    return MigrationCoordinator(
        store, KEYS, say, ControllerNotes(started=0.0), lambda: True, lambda: NOW
    )


async def ids(store: MemoryStore) -> set[str]:
    return {kv.key.rsplit("/", 1)[1] for kv in (await store.range(KEYS.prefix("migrations"))).kvs}


async def test_finished_records_past_the_count_go_oldest_first(store: MemoryStore) -> None:
    await configure(store, max_migration_records=10)
    # 25 finished records, an hour apart (f00 the newest), and 3 under way older than all
    await stored(store, *(migration(f"f{i:02}", 3600.0 * (i + 1)) for i in range(25)))
    await stored(
        store,
        *(migration(f"a{i}", 30 * 3600.0, state=_M.REQUESTED, target="") for i in range(3)),
    )
    said: list[str] = []
    await coordinator(store, said).cycle()
    left = await ids(store)
    assert left >= {"a0", "a1", "a2"}, "records under way never go"
    assert sorted(left - {"a0", "a1", "a2"}) == [f"f{i:02}" for i in range(10)], "newest 10"
    assert "migration.pruned pruned 15 finished migration records (15 beyond the newest 10)" in said


async def test_finished_records_past_the_age_go_whatever_their_count(store: MemoryStore) -> None:
    await configure(store, migration_retention_s=2 * DAY)
    old = migration("old", 3 * DAY, state=_M.FAILED)
    young = migration("young", 1 * DAY, state=_M.CANCELLED)
    stuck = migration("stuck", 9 * DAY, state=_M.PREPARING, vm="gone")
    await stored(store, old, young, stuck)
    said: list[str] = []
    await coordinator(store, said).cycle()
    assert await record(store, "old") is None
    assert await record(store, "young") is not None
    assert await record(store, "stuck") is not None, "under way: failed by the cycle, not pruned"
    assert any("1 older than 2 days" in s for s in said)


async def test_a_pruned_record_takes_its_vms_job_key_if_it_still_names_it(
    store: MemoryStore,
) -> None:
    await configure(store, max_migration_records=10)
    recs = [migration(f"f{i:02}", 60.0 * (i + 1), vm=f"vm{i:02}") for i in range(12)]
    await stored(store, *recs)
    await store.put(KEYS.job("vm11"), encode(job_of(recs[11])))  # left by the oldest
    other = migration("other", 1.0, state=_M.REQUESTED, vm="vm10", target="")
    await store.put(KEYS.job("vm10"), encode(job_of(other)))  # names another record
    await Retention(store, KEYS, _no_say, lambda: NOW).sweep(await _records(store))
    assert await record(store, "f11") is None and await record(store, "f10") is None
    assert await store.get(KEYS.job("vm11")) is None
    assert await store.get(KEYS.job("vm10")) is not None


async def test_a_drain_in_progress_keeps_the_records_it_reads(store: MemoryStore) -> None:
    await configure(store, max_migration_records=10)
    n1 = Node(
        name="n1",
        address="127.0.0.1",
        capacity=Capacity(cpus=4, memory_mib=4096),
        admin_state=NodeAdminState.DRAINING,
        admin_since=NOW - 30 * DAY,
    )
    await store.put(KEYS.node("n1"), encode(n1))
    drained = migration("drained", 6 * DAY, state=_M.FAILED, requested_by="drain:n1")
    await stored(store, drained, *(migration(f"f{i:02}", 60.0 * (i + 1)) for i in range(12)))
    retention = Retention(store, KEYS, _no_say, lambda: NOW)
    found = await _records(store)
    await retention.sweep(found)
    left = await ids(store)
    assert "drained" in left, "n1's drain decides its fallbacks from it"
    assert left - {"drained"} == {f"f{i:02}" for i in range(10)}


async def test_one_record_changed_since_read_leaves_the_rest_to_go(store: MemoryStore) -> None:
    recs = [migration(f"f{i:02}", 60.0) for i in range(40)]
    await stored(store, *recs)
    kvs = {kv.key: kv for kv in (await store.range(KEYS.prefix("migrations"))).kvs}
    victims = [Prunable(r, kvs[KEYS.migration(r.id)].mod_revision, "test") for r in recs]
    await store.put(KEYS.migration("f03"), encode(recs[3].model_copy(update={"reason": "x"})))
    gone = await prune(store, KEYS, lambda rec: KEYS.migration(rec.id), victims)
    assert gone == 39
    assert await ids(store) == {"f03"}


async def test_storage_moves_and_the_cluster_log_are_kept_by_count_and_age(
    store: MemoryStore,
) -> None:
    await configure(store, max_migration_records=10, event_retention=100, event_max_age_s=DAY)
    for i in range(14):
        rec = migration(f"s{i:02}", 60.0 * (i + 1), kind=MigrationKind.STORAGE, volume="b")
        await store.put(KEYS.storage_move(rec.id), encode(rec))
    log = EventLog(store, KEYS)  # appenders keep 10,000 by default: the sweep keeps 100
    for i in range(150):
        age = 2 * DAY if i < 20 else 60.0
        await log.append(Event(time=NOW - age, kind="test.event", reason=str(i)))
    said: list[str] = []
    retention = Retention(store, KEYS, _say(said), lambda: NOW)
    await retention.sweep(Decoded())
    moves = {kv.key for kv in (await store.range(KEYS.request("storage-moves/"))).kvs}
    assert moves == {KEYS.storage_move(f"s{i:02}") for i in range(10)}
    assert "storage_move.pruned pruned 4 finished storage move records" in said[0]
    kept = [int(e.event.reason) for e in await log.recent(1000)]
    assert kept == list(range(50, 150)), "the newest 100 (all younger than a day)"

    await log.append(Event(time=NOW - 3 * DAY, kind="test.event", reason="late, but old"))
    await retention.sweep(Decoded())
    assert len(await log.recent(1000)) == 101, "a sweep a moment later does not read again"
    later = Retention(store, KEYS, _no_say, lambda: NOW + 61)
    await later.sweep(Decoded())
    assert [e.event.reason for e in await log.recent(1000)][-1] == "149", "the old one went"


async def _records(store: MemoryStore) -> Decoded[Migration]:
    from hvcluster.store.migrations import read_migrations

    return await read_migrations(store, KEYS)


async def _no_say(kind: str, subject: str, reason: str) -> None:
    return None


def _say(said: list[str]) -> Say:
    async def say(kind: str, subject: str, reason: str) -> None:
        said.append(f"{kind} {reason}")

    return say


class NoDeletes(MemoryStore):
    """A store that refuses every txn that only deletes (pruning), as if broken for it."""

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        if success and all(isinstance(op, Delete) for op in success):
            raise StoreError("etcdserver: mvcc: database space exceeded")
        return await super().txn(compares, success, failure)


async def test_pruning_that_fails_does_not_stop_the_cycle() -> None:
    store = NoDeletes()
    await configure(store, max_migration_records=10)
    await stored(store, *(migration(f"f{i:02}", 60.0 * (i + 1)) for i in range(12)))
    await stored(store, migration("stale", 1.0, state=_M.REQUESTED, vm="gone", target=""))
    said: list[str] = []
    await coordinator(store, said).cycle()
    assert len(await ids(store)) == 13
    stale = await record(store, "stale")
    assert stale is not None and stale.state is _M.FAILED, "the cycle went on after pruning"
    await store.close()


async def test_thousands_of_records_over_grpcs_limit_on_etcd(etcd_session: EtcdCluster) -> None:
    """2,500 finished records of 2 KB (5 MB: one read of them used to exceed gRPC's 4 MiB
    and fail every cycle): the cycle runs and keeps the newest max_migration_records."""
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    store = EtcdStore(etcd_session.endpoints)
    try:
        config = ClusterConfig(name=keys.cluster, max_migration_records=100)
        await store.put(keys.config, encode(config))
        for start in range(0, 2500, 100):
            recs = [
                migration(f"f{i:04}", 60.0 * (i + 1), reason="r" * 2000)
                for i in range(start, start + 100)
            ]
            await store.txn([], [Put(keys.migration(r.id), encode(r)) for r in recs])

        async def say(kind: str, subject: str, reason: str) -> None:
            return None

        coordinator = MigrationCoordinator(
            store, keys, say, ControllerNotes(started=0.0), lambda: True, lambda: NOW
        )
        await coordinator.cycle()
        left = await store.range(keys.prefix("migrations"))
        assert [kv.key for kv in left.kvs] == [keys.migration(f"f{i:04}") for i in range(100)]
    finally:
        await store.delete(keys.root, prefix=True)
        await store.close()
