"""The watched cache (store/cache.py) on every backend: one read, then kept current by the
watch, whole revisions only, re-read when the watch cannot resume, corrupt values reported
once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from hvcluster.models.base import encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.errors import CorruptValue
from hvcluster.models.vm import Placement
from hvcluster.store.base import Delete, Put
from hvcluster.store.cache import WatchedCache
from hvcluster.store.reads import CorruptReporter, Decoded, read_kind
from tests.store.conftest import Harness

BAD = b'{"node": "n1", "epoch": "not a number"}'


def placed(node: str, epoch: int) -> bytes:
    return encode(Placement(node=node, epoch=epoch))


@pytest.fixture
async def cache(h: Harness) -> AsyncIterator[WatchedCache]:
    found = WatchedCache(
        h.store, {h.keys.prefix("placements"): Placement, h.keys.config: ClusterConfig}
    )
    yield found
    await found.close()


async def placements(h: Harness, cache: WatchedCache) -> Decoded[Placement]:
    view = await cache.read()
    found = view.decoded(h.keys.prefix("placements"), Placement)
    plain = await read_kind(h.store, h.keys, "placements", Placement)
    # what a plain read at (at least) that revision finds, no more, no less
    assert {n: (s.value, s.mod_revision) for n, s in found.items.items()} == {
        n: (s.value, s.mod_revision) for n, s in plain.items.items()
    }
    assert found.present == plain.present
    return found


async def test_one_read_then_changes_by_revision(h: Harness, cache: WatchedCache) -> None:
    for i in range(3):
        await h.store.put(h.keys.placement(f"vm{i}"), placed("n1", 1))
    await h.store.put(h.k("elsewhere"), b"not cached, not decoded")
    first = await placements(h, cache)
    assert set(first.items) == {"vm0", "vm1", "vm2"}
    assert (cache.rereads, cache.decoded) == (1, 3)
    await h.store.put(h.keys.placement("vm1"), placed("n2", 2))
    await h.store.delete(h.keys.placement("vm2"))
    await h.store.put(h.keys.config, encode(ClusterConfig(name="c", fence_after_s=3)))
    second = await placements(h, cache)
    assert second.items["vm1"].value.node == "n2" and "vm2" not in second.present
    assert second.items["vm0"] is first.items["vm0"]  # unchanged: not decoded again
    now = await h.store.revision()
    view = await cache.read()
    assert view.revision >= now  # current as of the read, not merely recent
    config = view.decoded(h.keys.config, ClusterConfig).get("")
    assert config is not None and config.fence_after_s == 3
    assert (cache.rereads, cache.decoded) == (1, 5)  # vm1 and the config: nothing read again


async def test_a_transaction_is_never_seen_in_part(h: Harness, cache: WatchedCache) -> None:
    """A reader reading as often as it can while transactions each write two keys (and
    delete a third) sees every transaction whole or not at all."""
    a, b, c = (h.keys.placement(n) for n in ("a", "b", "c"))
    await h.store.put(c, placed("n1", 1))
    await cache.read()
    stop = asyncio.Event()
    seen: list[tuple[int, int, bool]] = []
    read = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            found = (await cache.read()).decoded(h.keys.prefix("placements"), Placement)
            got = [found.get(n) for n in ("a", "b")]
            seen.append(
                (
                    got[0].epoch if got[0] else 0,
                    got[1].epoch if got[1] else 0,
                    "c" in found.present,
                )
            )
            read.set()

    task = asyncio.create_task(reader())
    try:
        for epoch in range(2, 17):
            ops = [Put(a, placed("n1", epoch)), Put(b, placed("n1", epoch))]
            if epoch == 9:
                ops.append(Delete(c))
            assert (await h.store.txn((), ops)).succeeded
            for _ in range(2):  # the reader reads (at least once whole) before the next one
                read.clear()
                async with asyncio.timeout(10):
                    await read.wait()
    finally:
        stop.set()
        await task
    final = await placements(h, cache)
    assert final.items["a"].value.epoch == final.items["b"].value.epoch == 16
    assert len({ea for ea, _, _ in seen}) > 10  # it did read between the transactions
    for ea, eb, has_c in seen:
        assert ea == eb, f"half a transaction seen: a at {ea}, b at {eb}"
        assert has_c == (ea < 9), f"the delete of c not seen with epoch {ea}"


async def test_compacted_while_suspended_reads_again(h: Harness, cache: WatchedCache) -> None:
    await h.store.put(h.keys.placement("vm1"), placed("n1", 1))
    await h.store.put(h.keys.placement("vm2"), placed("n1", 1))
    first = await placements(h, cache)
    # Suspended (not leading): changes meanwhile come from the watch when it resumes...
    await cache.suspend()
    await h.store.put(h.keys.placement("vm1"), placed("n2", 2))
    await placements(h, cache)
    assert cache.rereads == 1
    # ...unless the store compacted them away: then everything is read again.
    await cache.suspend()
    await h.store.put(h.keys.placement("vm3"), placed("n3", 1))
    await h.store.delete(h.keys.placement("vm1"))
    await h.compact(await h.store.revision())
    again = await placements(h, cache)
    assert cache.rereads == 2
    assert set(again.present) == {"vm2", "vm3"}
    assert again.items["vm2"] is first.items["vm2"]  # kept across the re-read, not decoded


async def test_a_corrupt_value_is_reported_once_until_fixed(h: Harness) -> None:
    said: list[str] = []

    async def write_event(error: CorruptValue, revision: int) -> None:
        said.append(error.key)

    cache = WatchedCache(
        h.store, {h.keys.prefix("placements"): Placement}, CorruptReporter(write_event)
    )
    key = h.keys.placement("vm1")
    await h.store.put(key, BAD)
    try:
        for _ in range(2):
            found = await placements(h, cache)
            assert found.unreadable == {"vm1"} and len(found.corrupt) == 1
        await h.store.put(h.keys.placement("vm2"), placed("n1", 1))  # a change elsewhere
        found = await placements(h, cache)
        assert found.unreadable == {"vm1"}
        assert said == [key]  # once, not once per read
        await h.store.put(key, placed("n1", 3))
        fixed = await placements(h, cache)
        assert fixed.items["vm1"].value.epoch == 3 and not fixed.corrupt
    finally:
        await cache.close()


async def test_too_many_changes_unread_stop_the_watch(h: Harness) -> None:
    """A cache nobody reads stops holding changes past its bound; a read then reads all."""
    cache = WatchedCache(h.store, {h.keys.prefix("placements"): Placement}, max_pending=5)
    try:
        await placements(h, cache)
        for i in range(10):
            await h.store.put(h.keys.placement(f"vm{i}"), placed("n1", 1))
        found = await placements(h, cache)
        assert len(found.items) == 10 and cache.rereads == 2
        await h.store.put(h.keys.placement("vm0"), placed("n2", 2))
        assert (await placements(h, cache)).items["vm0"].value.node == "n2"
        assert cache.rereads == 2  # under the bound: from the watch
    finally:
        await cache.close()
