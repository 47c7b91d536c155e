"""What only the memory store has: the real-clock reaper, a simulated outage, bounded history,
and many tasks on one store."""

from __future__ import annotations

import asyncio
import time

import pytest

from hvcluster.models.errors import LeaseLost, StoreUnavailable
from hvcluster.store.base import Compare, EventType, Put, WatchCompacted
from hvcluster.store.clock import ManualClock
from hvcluster.store.memory_store import MemoryStore
from tests.store.conftest import Collector, collect


@pytest.mark.timeout(10)
async def test_with_the_real_clock_leases_expire_without_other_traffic() -> None:
    store = MemoryStore()
    try:
        lease = await store.grant(0.3)
        rev = await store.put("/r/bound", b"x", lease.id)
        granted = time.monotonic()
        async with asyncio.timeout(0.3 + 1.0):
            events = await collect(store, "/r/", rev + 1, 1)
        late = time.monotonic() - granted - 0.3
        assert events[0].type == EventType.DELETE
        assert late >= -0.01, "deleted before its TTL"
        assert (await store.range("/r/")).kvs == ()
    finally:
        await store.close()


async def test_expire_leases_is_exact_on_a_manual_clock() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    short, long_ = await store.grant(1.0), await store.grant(2.5)
    await store.put("/m/short", b"", short.id)
    await store.put("/m/long", b"", long_.id)
    assert await store.lease_ttl(long_.id) == 2.5
    await clock.advance(1.0)  # time moves with nobody calling the store (no tick hook)...
    assert store.expire_leases() == 1  # ...until the simulation says so
    assert [kv.key for kv in (await store.range("/m/")).kvs] == ["/m/long"]
    assert await store.lease_ttl(long_.id) == 1.5
    await clock.advance(1.5)
    assert await store.get("/m/long") is None  # every operation expires first
    await store.close()


async def test_an_outage_fails_calls_holds_watches_and_restarts_ttls() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    clock.on_tick.append(store.expire_leases)
    lease = await store.grant(4.0)
    rev = await store.put("/o/alive", b"1", lease.id)
    watch = Collector(store, "/o/", rev + 1)
    await clock.advance(3.0)
    store.set_available(False)
    for call in (store.get("/o/alive"), store.put("/o/x", b""), store.keepalive(lease.id)):
        with pytest.raises(StoreUnavailable):
            await call
    assert (await store.health()).leader is None
    await clock.advance(10.0)  # no quorum: nothing expires
    store.set_available(True)  # a new leader: every TTL starts over
    assert await store.get("/o/alive") is not None
    await clock.advance(3.9)
    assert await store.get("/o/alive") is not None
    await clock.advance(0.1)
    assert await store.get("/o/alive") is None
    events = await watch.wait_for(lambda evs: len(evs) == 1)
    assert events[0].type == EventType.DELETE and watch.error is None
    await watch.stop()
    with pytest.raises(LeaseLost):
        await store.keepalive(lease.id)
    await store.close()


async def test_history_is_bounded_and_a_lagging_watch_is_told() -> None:
    store = MemoryStore(ManualClock(), history=10)
    first = await store.put("/h/k", b"0")
    for i in range(1, 30):
        await store.put("/h/k", str(i).encode())
    with pytest.raises(WatchCompacted) as caught:
        await collect(store, "/h/", first, 1)
    oldest = caught.value.compact_revision
    assert first < oldest <= await store.revision() - 9
    events = await collect(store, "/h/", oldest, 3)
    assert [e.mod_revision for e in events] == [oldest, oldest + 1, oldest + 2]
    await store.close()


async def test_close_ends_watches_and_calls() -> None:
    store = MemoryStore(ManualClock())
    watch = Collector(store, "/c/", 0)
    await asyncio.sleep(0)
    await store.close()
    with pytest.raises(StoreUnavailable):
        await watch.wait_for(lambda evs: False, timeout=2)
    with pytest.raises(StoreUnavailable):
        await store.get("/c/x")


async def test_many_tasks_share_one_store_fairly() -> None:
    """Each call yields once, as real I/O would: busy tasks do not starve the others."""
    store = MemoryStore(ManualClock())
    order: list[int] = []

    async def worker(n: int) -> None:
        for i in range(20):
            key = f"/f/{n}"
            kv = await store.get(key)
            mod = kv.mod_revision if kv else 0
            result = await store.txn([Compare.mod_is(key, mod)], [Put(key, str(i).encode())])
            assert result.succeeded
            order.append(n)

    await asyncio.gather(*(worker(n) for n in range(5)))
    assert sorted(order) == sorted(list(range(5)) * 20)
    assert order[:5] != [0] * 5, "tasks interleave"
    await store.close()
