"""Contract: reads of any size (more than gRPC's 4 MiB) come whole and as of one revision;
a compare on a prefix guards every key under it; a watch hands on any amount of history."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from hvcluster.lab.etcd import EtcdCluster
from hvcluster.store.base import Compare, Delete, Get, Page, Put, RevisionCompacted, Store
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.memory_store import MemoryStore
from tests.store.conftest import Collector, Harness

BIG = 600  # keys of VALUE_SIZE bytes: about 6 MB under one prefix, over gRPC's 4 MiB
VALUE_SIZE = 10_000


def big_value(i: int, generation: int = 0) -> bytes:
    head = f"{i}:{generation}:".encode()
    return head + b"x" * (VALUE_SIZE - len(head))


async def fill(h: Harness, prefix: str, generation: int = 0) -> int:
    """BIG keys under ``prefix``, 100 to a txn (each under etcd's 1.5 MiB request limit)."""
    revision = 0
    for start in range(0, BIG, 100):
        ops = [
            Put(h.k(f"{prefix}{i:04}"), big_value(i, generation)) for i in range(start, start + 100)
        ]
        revision = (await h.store.txn([], ops)).revision
    return revision


async def test_a_prefix_over_the_message_limit_reads_whole(h: Harness) -> None:
    await fill(h, "big/")
    await h.store.put(h.k("big0"), b"not under big/")
    r = await h.store.range(h.k("big/"))
    assert [kv.key for kv in r.kvs] == [h.k(f"big/{i:04}") for i in range(BIG)]
    assert all(kv.value == big_value(i) for i, kv in enumerate(r.kvs))
    assert r.revision == await h.store.revision()


async def test_large_values_read_whole_in_smaller_pages(h: Harness) -> None:
    """50 values of 200 KB: a first page of them all would be 10 MB (etcd: read again at
    half the keys until a page fits)."""
    for start in range(0, 50, 5):
        ops = [Put(h.k(f"large/{i:02}"), bytes([i]) * 200_000) for i in range(start, start + 5)]
        await h.store.txn([], ops)
    r = await h.store.range(h.k("large/"))
    assert [kv.value[:1] for kv in r.kvs] == [bytes([i]) for i in range(50)]
    assert {len(kv.value) for kv in r.kvs} == {200_000}
    singles = await h.store.txn([], [Get(h.k(f"large/{i:02}")) for i in range(0, 50, 2)])
    assert [kvs[0].value[:1] for kvs in singles.gets] == [bytes([i]) for i in range(0, 50, 2)]
    assert singles.revision == r.revision


async def test_a_paged_read_is_one_revision_while_writers_go_on(h: Harness) -> None:
    """The first and last key change together in one txn, all the time: every read sees
    them equal (a read whose later pages were read at a later revision would not)."""
    await fill(h, "big/")
    first, last = h.k("big/0000"), h.k(f"big/{BIG - 1:04}")
    stop = asyncio.Event()
    written = 0

    async def writer() -> None:
        nonlocal written
        while not stop.is_set():
            written += 1
            await h.store.txn(
                [], [Put(first, big_value(0, written)), Put(last, big_value(BIG - 1, written))]
            )

    task = asyncio.create_task(writer())
    try:
        for _ in range(3):
            before = written
            r = await h.store.range(h.k("big/"))
            assert len(r.kvs) == BIG
            head, tail = r.kvs[0].value.split(b":")[1], r.kvs[-1].value.split(b":")[1]
            assert head == tail, "the first and the last page were read at two revisions"
            assert r.kvs[0].mod_revision <= r.revision
            assert written > before, "the writer wrote while the read ran"
    finally:
        stop.set()
        await task


async def test_a_read_only_txn_reads_large_prefixes_at_one_revision(h: Harness) -> None:
    await fill(h, "a/")
    await fill(h, "b/", generation=1)
    await h.store.put(h.k("one"), b"1")
    now = await h.store.revision()
    result = await h.store.txn(
        [], [Get(h.k("a/"), prefix=True), Get(h.k("one")), Get(h.k("b/"), prefix=True)]
    )
    assert result.succeeded and result.revision == now
    a, one, b = result.gets
    assert (len(a), len(b)) == (BIG, BIG)
    assert [kv.value for kv in one] == [b"1"]
    assert b[7].value == big_value(7, 1)


async def test_a_range_as_of_a_past_revision(h: Harness) -> None:
    s = h.store
    await s.put(h.k("p/a"), b"1")
    await s.put(h.k("p/b"), b"1")
    then = await s.revision()
    await s.put(h.k("p/a"), b"2")
    await s.delete(h.k("p/b"))
    await s.put(h.k("p/c"), b"new")
    old = await s.range(h.k("p/"), revision=then)
    assert old.revision == then
    assert [(kv.key, kv.value) for kv in old.kvs] == [(h.k("p/a"), b"1"), (h.k("p/b"), b"1")]
    assert [kv.value for kv in (await s.range(h.k("p/"))).kvs] == [b"2", b"new"]

    await h.compact(await s.revision())
    with pytest.raises(RevisionCompacted):
        await s.range(h.k("p/"), revision=then)


async def test_a_compare_on_a_prefix_guards_every_key_under_it(h: Harness) -> None:
    s = h.store
    prefix = h.k("vms/")
    assert (await s.txn([Compare.unchanged_since(prefix, 0)], [])).succeeded, "none there"
    await s.put(h.k("vms/a"), b"1")
    await s.put(h.k("vms/b"), b"1")
    read_at = await s.revision()
    guard = [Compare.unchanged_since(prefix, read_at)]
    assert (await s.txn(guard, [])).succeeded
    await s.put(h.k("elsewhere"), b"x")
    assert (await s.txn(guard, [])).succeeded, "a key outside the prefix does not count"

    await s.put(h.k("vms/b"), b"2")
    assert not (await s.txn(guard, [Put(h.k("done"), b"1")])).succeeded, "a key changed"
    assert await s.get(h.k("done")) is None
    read_at = await s.revision()
    await s.put(h.k("vms/c"), b"new")
    assert not (await s.txn([Compare.unchanged_since(prefix, read_at)], [])).succeeded, (
        "a key created"
    )
    read_at = await s.revision()
    await s.txn([], [Delete(h.k("vms/a"))])
    assert (await s.txn([Compare.unchanged_since(prefix, read_at)], [])).succeeded, (
        "a key deleted is not seen (guard only decisions that a new user could change)"
    )


async def test_a_watch_from_the_past_hands_on_more_than_the_message_limit(h: Harness) -> None:
    """etcd sends a catching-up watcher up to 1,000 revisions in one answer unless asked to
    split it: about 18 MB here, whole revisions of 2 MB (with the values before) among them."""
    start = await h.store.revision() + 1
    await fill(h, "w/")
    await fill(h, "w/", generation=1)
    watch = Collector(h.store, h.k("w/"), start)
    try:
        events = await watch.wait_for(lambda evs: len(evs) >= 2 * BIG, timeout=60)
    finally:
        await watch.stop()
    assert len(events) == 2 * BIG, "nothing handed on twice"
    assert [e.key for e in events] == [h.k(f"w/{i:04}") for i in range(BIG)] * 2
    assert events[BIG + 5].value == big_value(5, 1)
    assert events[BIG + 5].prev_value == big_value(5, 0)
    revisions = [e.mod_revision for e in events]
    assert revisions == sorted(revisions)


class CompactOnce:
    """Mixed into a store: after the first page of the next range read, writes one key
    under the prefix and compacts to now (as etcd's auto-compaction might)."""

    armed = False

    async def _range_page(self, prefix: str, start: str, revision: int, limit: int) -> Page:
        page: Page = await super()._range_page(prefix, start, revision, limit)  # type: ignore[misc]
        if self.armed and page.more:
            self.armed = False
            store: Store = self  # type: ignore[assignment]
            await store.put(prefix + "zz-late", b"written between two pages")
            await store.compact(await store.revision())  # type: ignore[attr-defined]
        return page


class CompactingMemory(CompactOnce, MemoryStore):
    pass


class CompactingEtcd(CompactOnce, EtcdStore):
    pass


@pytest.fixture(params=["memory", "etcd"])
async def compacting(
    request: pytest.FixtureRequest,
) -> AsyncIterator[CompactingMemory | CompactingEtcd]:
    store: CompactingMemory | CompactingEtcd
    if request.param == "memory":
        store = CompactingMemory(page_size=10)
    else:
        cluster: EtcdCluster = request.getfixturevalue("etcd_session")
        store = CompactingEtcd(cluster.endpoints)
    try:
        yield store
    finally:
        await store.close()


async def test_a_read_overtaken_by_compaction_starts_over(
    compacting: CompactingMemory | CompactingEtcd,
) -> None:
    store, prefix = compacting, f"/t/{uuid.uuid4().hex[:8]}/c/"
    for start in range(0, 300, 100):
        ops = [Put(f"{prefix}{i:03}", b"x" * 10_000) for i in range(start, start + 100)]
        await store.txn([], ops)
    store.armed = True
    r = await store.range(prefix)
    assert not store.armed, "compacted between two pages"
    assert len(r.kvs) == 301 and r.kvs[-1].key == f"{prefix}zz-late", "read again, whole"
    assert r.revision == await store.revision()
