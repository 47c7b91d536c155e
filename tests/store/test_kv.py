"""Contract: reads, writes, revisions and transactions, on both backends."""

from __future__ import annotations

import asyncio

import pytest

from hvcluster.models.errors import LeaseLost, StoreError
from hvcluster.store.base import Compare, Delete, Get, Put
from tests.store.conftest import Harness


async def test_put_get_delete_keep_etcd_revisions(h: Harness) -> None:
    s, key = h.store, h.k("a")
    start = await s.revision()
    assert await s.get(key) is None

    rev1 = await s.put(key, b"one")
    assert rev1 == start + 1 == await s.revision()
    kv = await s.get(key)
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"one", rev1, rev1, 1)

    rev2 = await s.put(key, b"two")
    kv = await s.get(key)
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"two", rev1, rev2, 2)

    assert await s.delete(key) == 1
    assert await s.revision() == rev2 + 1
    assert await s.get(key) is None
    assert await s.delete(key) == 0
    assert await s.revision() == rev2 + 1, "deleting nothing must not raise the revision"

    rev4 = await s.put(key, b"again")
    kv = await s.get(key)
    assert kv is not None
    assert (kv.create_revision, kv.version) == (rev4, 1), "a key re-created starts over"


async def test_range_is_prefix_only_in_key_order(h: Harness) -> None:
    s = h.store
    for name in ("a/2", "a/1", "ab", "b", "a/3"):
        await s.put(h.k(name), name.encode())
    r = await s.range(h.k("a/"))
    assert [kv.key for kv in r.kvs] == [h.k("a/1"), h.k("a/2"), h.k("a/3")]
    assert r.revision == await s.revision()
    assert [kv.value for kv in (await s.range(h.k("a"))).kvs] == [b"a/1", b"a/2", b"a/3", b"ab"]

    assert await s.delete(h.k("a/"), prefix=True) == 3
    assert [kv.key for kv in (await s.range(h.prefix)).kvs] == [h.k("ab"), h.k("b")]


async def test_cas_on_mod_revision(h: Harness) -> None:
    s, key = h.store, h.k("owner")
    rev = await s.put(key, b"n1")
    lost = await s.txn([Compare.mod_is(key, rev - 1)], [Put(key, b"n2")], [Get(key)])
    assert not lost.succeeded
    assert [kv.value for kv in lost.gets[0]] == [b"n1"], "the failure branch ran"
    won = await s.txn([Compare.mod_is(key, rev)], [Put(key, b"n2")], [Get(key)])
    assert won.succeeded
    assert won.revision == rev + 1
    again = await s.txn([Compare.mod_is(key, rev)], [Put(key, b"n3")])
    assert not again.succeeded, "the same compare cannot win twice"
    kv = await s.get(key)
    assert kv is not None and kv.value == b"n2"


async def test_cas_on_version_create_value_and_lease(h: Harness) -> None:
    s, key = h.store, h.k("k")
    assert (await s.txn([Compare.absent(key)], [Put(key, b"v1")])).succeeded
    assert not (await s.txn([Compare.absent(key)], [Put(key, b"x")])).succeeded
    assert (await s.txn([Compare.present(key)], [Put(key, b"v2")])).succeeded
    kv = await s.get(key)
    assert kv is not None
    assert (await s.txn([Compare(key, "version", "==", 2)], [])).succeeded
    assert not (await s.txn([Compare(key, "version", "<", 2)], [])).succeeded
    assert (await s.txn([Compare(key, "create", "==", kv.create_revision)], [])).succeeded
    assert (await s.txn([Compare(key, "create", "!=", 0)], [])).succeeded
    assert (await s.txn([Compare.value_is(key, b"v2")], [])).succeeded
    assert not (await s.txn([Compare.value_is(key, b"v1")], [])).succeeded
    assert (await s.txn([Compare(key, "value", ">", b"v1")], [])).succeeded
    # As etcd: a value compare on a missing key is false whatever the operator.
    missing = h.k("missing")
    assert not (await s.txn([Compare.value_is(missing, b"")], [])).succeeded
    assert not (await s.txn([Compare(missing, "value", "!=", b"x")], [])).succeeded
    assert (await s.txn([Compare.mod_is(missing, 0)], [])).succeeded

    lease = await s.grant(30)
    await s.put(key, b"v3", lease.id)
    assert (await s.txn([Compare(key, "lease", "==", lease.id)], [])).succeeded
    assert not (await s.txn([Compare(key, "lease", "==", 0)], [])).succeeded
    await s.revoke(lease.id)


async def test_txn_runs_its_ops_in_order_at_one_revision(h: Harness) -> None:
    s = h.store
    await s.put(h.k("x"), b"old")
    before = await s.revision()
    result = await s.txn(
        [],
        [Put(h.k("a"), b"1"), Put(h.k("b"), b"2"), Delete(h.k("x")), Get(h.prefix, prefix=True)],
    )
    assert result.succeeded
    assert result.revision == before + 1, "one txn is one revision"
    assert [kv.key for kv in result.gets[0]] == [h.k("a"), h.k("b")], "reads see earlier ops"
    for name in ("a", "b"):
        kv = await s.get(h.k(name))
        assert kv is not None and kv.mod_revision == before + 1

    reads = await s.txn([], [Get(h.k("a")), Get(h.k("nothing"))])
    assert [len(g) for g in reads.gets] == [1, 0]
    assert reads.revision == before + 1, "a txn that writes nothing keeps the revision"
    failed = await s.txn([Compare.absent(h.k("a"))], [Put(h.k("c"), b"3")])
    assert not failed.succeeded and failed.revision == before + 1
    assert await s.get(h.k("c")) is None


async def test_a_concurrent_reader_never_sees_half_a_txn(h: Harness) -> None:
    s = h.store
    a, b = h.k("pair/a"), h.k("pair/b")
    await s.txn([], [Put(a, b"0"), Put(b, b"0")])
    done = asyncio.Event()
    torn: list[tuple[bytes, bytes]] = []
    reads = 0

    async def reader() -> None:
        nonlocal reads
        while not done.is_set():
            r = await s.range(h.k("pair/"))
            values = tuple(kv.value for kv in r.kvs)
            if values[0] != values[1]:
                torn.append((values[0], values[1]))
            reads += 1

    task = asyncio.create_task(reader())
    for i in range(1, 101):
        v = str(i).encode()
        await s.txn([], [Put(a, v), Put(b, v)])
    done.set()
    await task
    assert reads > 0
    assert torn == []


async def test_concurrent_cas_increments_lose_nothing(h: Harness) -> None:
    s, key = h.store, h.k("counter")
    await s.put(key, b"0")
    conflicts = 0

    async def increment(times: int) -> None:
        nonlocal conflicts
        for _ in range(times):
            while True:
                kv = await s.get(key)
                assert kv is not None
                result = await s.txn(
                    [Compare.mod_is(key, kv.mod_revision)],
                    [Put(key, str(int(kv.value) + 1).encode())],
                )
                if result.succeeded:
                    break
                conflicts += 1

    await asyncio.gather(*(increment(10) for _ in range(10)))
    kv = await s.get(key)
    assert kv is not None and kv.value == b"100"
    assert kv.version == 101


async def test_a_put_with_a_lease_that_is_gone_fails(h: Harness) -> None:
    lease = await h.store.grant(30)
    await h.store.revoke(lease.id)
    with pytest.raises(LeaseLost):
        await h.store.put(h.k("a"), b"x", lease.id)
    with pytest.raises(LeaseLost):
        await h.store.txn([], [Put(h.k("a"), b"x", lease.id)])
    assert await h.store.get(h.k("a")) is None


async def test_bad_txns_are_store_errors(h: Harness) -> None:
    key = h.k("dup")
    with pytest.raises(StoreError, match="duplicate key"):
        await h.store.txn([], [Put(key, b"1"), Put(key, b"2")])
    with pytest.raises(StoreError, match="too many operations"):
        await h.store.txn([], [Put(h.k(f"many/{i}"), b"") for i in range(129)])
    with pytest.raises(StoreError):
        await h.store.txn([Compare(key, "mod", "==", b"not an int")], [])
    assert (await h.store.range(h.prefix)).kvs == ()
