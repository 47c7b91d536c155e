"""The event log: numbered appends, recent, follow, retention, corrupt values skipped."""

from __future__ import annotations

import asyncio

from hvcluster.models.errors import CorruptValue
from hvcluster.models.event import Event
from hvcluster.store.events import EventLog, LoggedEvent
from hvcluster.store.keys import Keys
from tests.counting import CountingStore
from tests.store.conftest import Harness


def ev(i: int, kind: str = "test.step") -> Event:
    return Event(time=1000.0 + i, kind=kind, subject=f"vm/v{i}", reason=f"step {i}", actor="t")


async def test_append_numbers_in_order_and_recent_reads_the_newest(h: Harness) -> None:
    log = EventLog(h.store, h.keys)
    assert await log.recent(10) == []
    seqs = [await log.append(ev(i)) for i in range(1, 6)]
    assert seqs == [1, 2, 3, 4, 5]
    assert await log.last_seq() == 5
    recent = await log.recent(3)
    assert [(e.seq, e.event) for e in recent] == [(3, ev(3)), (4, ev(4)), (5, ev(5))]
    assert [e.seq for e in await log.recent(100)] == [1, 2, 3, 4, 5]


async def test_concurrent_appends_get_unique_numbers_without_holes(h: Harness) -> None:
    log = EventLog(h.store, h.keys)

    async def writer(w: int) -> list[int]:
        return [await log.append(ev(w * 100 + i)) for i in range(5)]

    results = await asyncio.gather(*(writer(w) for w in range(10)))
    seqs = sorted(s for r in results for s in r)
    assert seqs == list(range(1, 51))
    assert all(r == sorted(r) for r in results), "each writer's events are in its order"
    assert len(await log.recent(100)) == 50


async def test_follow_yields_appends_as_they_come(h: Harness) -> None:
    log = EventLog(h.store, h.keys)
    await log.append(ev(0))
    start = await h.store.revision() + 1
    got: list[LoggedEvent] = []

    async def follow() -> None:
        async for e in log.follow(start):
            got.append(e)
            if len(got) == 3:
                return

    follower = asyncio.create_task(follow())
    for i in range(1, 4):
        await log.append(ev(i))
    async with asyncio.timeout(10):
        await follower
    assert [(e.seq, e.event.reason) for e in got] == [(2, "step 1"), (3, "step 2"), (4, "step 3")]


async def test_retention_keeps_the_newest_in_batches(h: Harness) -> None:
    log = EventLog(h.store, h.keys, retention=20, batch=10)
    for i in range(1, 56):
        await log.append(ev(i))
    # Every 10th append deletes the 10 that fell out of the newest 20: after 55, 31..55 remain.
    kept = [e.seq for e in await log.recent(100)]
    assert kept == list(range(31, 56))
    assert await log.trim() == 5
    assert [e.seq for e in await log.recent(100)] == list(range(36, 56))
    assert await log.append(ev(56)) == 56


async def test_append_all_numbers_many_in_order_and_keeps_the_retention(h: Harness) -> None:
    """250 events at once (more than one transaction's limit, on etcd too): consecutive
    numbers in their order, after the one before; retention as if appended one by one."""
    log = EventLog(h.store, h.keys, retention=150, batch=10)
    assert await log.append(ev(0)) == 1
    assert await log.append_all([]) == []
    seqs = await log.append_all([ev(i) for i in range(1, 251)])
    assert seqs == list(range(2, 252))
    kept = await log.recent(300)
    assert [e.seq for e in kept] == list(range(101, 252))
    assert [e.event for e in kept] == [ev(i) for i in range(100, 251)]
    assert await log.append(ev(251)) == 252


async def test_append_all_takes_few_transactions() -> None:
    store = CountingStore()
    log = EventLog(store, Keys("few"))
    await log.append_all([ev(i) for i in range(125)])
    assert store.txns == 2, f"{store.txns} txns for 125 events"  # 99 and 26


async def test_trim_by_age_keeps_young_and_undecodable_events(h: Harness) -> None:
    log = EventLog(h.store, h.keys, retention=1000)
    for i, at in enumerate((100.0, 5000.0, 200.0, 9000.0), start=1):
        await log.append(ev(i).model_copy(update={"time": at}))
    await h.store.put(h.keys.event(5), b"not an event")
    assert await log.trim(max_age_s=1000.0, now=6000.0) == 2
    left = [kv.key for kv in (await h.store.range(log.prefix)).kvs]
    assert left == [log.counter, *(h.keys.event(s) for s in (2, 4, 5))]


async def test_a_corrupt_event_is_reported_and_skipped(h: Harness) -> None:
    reported: list[CorruptValue] = []
    log = EventLog(h.store, h.keys, on_corrupt=reported.append)
    for i in range(1, 4):
        await log.append(ev(i))
    await h.store.put(h.keys.event(2), b"{not json")
    assert [e.seq for e in await log.recent(10)] == [1, 3]
    assert log.corrupt == 1
    assert reported[0].key == h.keys.event(2)

    start = await h.store.revision() + 1
    got: list[LoggedEvent] = []

    async def follow() -> None:
        async for e in log.follow(start):
            got.append(e)
            return

    follower = asyncio.create_task(follow())
    await h.store.put(h.keys.event(4), b'{"kind": ""}')  # valid JSON, invalid event
    await h.store.put(h.keys.event(0), b"4")
    assert await log.append(ev(5)) == 5
    async with asyncio.timeout(10):
        await follower
    assert [e.seq for e in got] == [5]
    assert log.corrupt == 2
    assert "kind" in str(reported[1])


async def test_a_corrupt_counter_does_not_stop_the_log(h: Harness) -> None:
    reported: list[CorruptValue] = []
    log = EventLog(h.store, h.keys, on_corrupt=reported.append)
    for i in range(1, 4):
        await log.append(ev(i))
    await h.store.put(h.keys.event(0), b"garbage")
    assert await log.append(ev(4)) == 4
    assert reported and reported[0].key == h.keys.event(0)
    await h.store.put(h.keys.event(0), b"1")  # behind: the log goes on after its newest
    assert await log.append(ev(5)) == 5
    assert [e.seq for e in await log.recent(10)] == [1, 2, 3, 4, 5]
