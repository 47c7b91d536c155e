"""Contract: watches deliver every change under a prefix, in order, once; compaction is said."""

from __future__ import annotations

import asyncio

import pytest

from hvcluster.store.base import Delete, EventType, Put, WatchCompacted
from tests.store.conftest import Collector, Harness, collect


async def test_a_watch_sees_every_change_in_order(h: Harness) -> None:
    s = h.store
    start = await s.revision() + 1
    watch = Collector(s, h.k("w/"), start)
    try:
        r1 = await s.put(h.k("w/a"), b"1")
        await s.put(h.k("elsewhere"), b"not watched")
        r2 = await s.put(h.k("w/a"), b"2")
        txn = await s.txn([], [Put(h.k("w/b"), b"3"), Put(h.k("w/c"), b"4"), Delete(h.k("w/a"))])
        assert await s.delete(h.k("w/"), prefix=True) == 2
        r_last = await s.revision()
        events = await watch.wait_for(lambda evs: len(evs) >= 7)
    finally:
        await watch.stop()
    assert [(e.type, e.key, e.value, e.mod_revision) for e in events] == [
        (EventType.PUT, h.k("w/a"), b"1", r1),
        (EventType.PUT, h.k("w/a"), b"2", r2),
        (EventType.PUT, h.k("w/b"), b"3", txn.revision),
        (EventType.PUT, h.k("w/c"), b"4", txn.revision),
        (EventType.DELETE, h.k("w/a"), b"", txn.revision),
        (EventType.DELETE, h.k("w/b"), b"", r_last),
        (EventType.DELETE, h.k("w/c"), b"", r_last),
    ]
    assert events[1].prev_value == b"1"
    assert events[4].prev_value == b"2"


async def test_a_watch_replays_history_from_a_past_revision(h: Harness) -> None:
    s = h.store
    revs = [await s.put(h.k(f"h/{i}"), str(i).encode()) for i in range(5)]
    events = await collect(s, h.k("h/"), revs[2], 3)
    assert [e.mod_revision for e in events] == revs[2:]
    assert [e.value for e in events] == [b"2", b"3", b"4"]


async def test_a_watch_from_revision_zero_starts_now(h: Harness) -> None:
    s = h.store
    await s.put(h.k("n/old"), b"old")
    watch = Collector(s, h.k("n/"), 0)
    try:
        # "Now" is when the watch is set up, a moment after it is asked for: write until
        # it sees something. The old change must never show up.
        revs = []
        for i in range(100):
            revs.append(await s.put(h.k(f"n/new{i}"), b"new"))
            if watch.events:
                break
            await asyncio.sleep(0.01)
        events = await watch.wait_for(lambda evs: evs and evs[-1].mod_revision == revs[-1])
    finally:
        await watch.stop()
    assert all(e.key != h.k("n/old") for e in events)
    assert [e.mod_revision for e in events] == revs[len(revs) - len(events) :]


async def test_a_compacted_revision_raises_watch_compacted(h: Harness) -> None:
    s = h.store
    revs = [await s.put(h.k(f"c/{i}"), b"x") for i in range(4)]
    await h.compact(revs[2])
    with pytest.raises(WatchCompacted) as caught:
        await collect(s, h.k("c/"), revs[0], 1)
    assert caught.value.compact_revision == revs[2]
    events = await collect(s, h.k("c/"), revs[2], 2)
    assert [e.mod_revision for e in events] == revs[2:]
