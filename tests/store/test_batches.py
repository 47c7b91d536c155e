"""Contract: many guarded writes in few transactions, within etcd's limits (128 ops, 1.5 MiB),
each write committing only while its own compares hold."""

from __future__ import annotations

from hvcluster.store.base import Compare, Put
from hvcluster.store.batches import MAX_BYTES, Write, batches, commit_all
from tests.store.conftest import Harness


def put_if_absent(h: Harness, name: str, value: bytes = b"v") -> Write:
    key = h.k(f"p/{name}")
    return Write((Compare.absent(key), Compare.absent(h.k("gate"))), (Put(key, value),))


async def test_300_writes_go_in_three_transactions_and_each_keeps_its_compares(
    h: Harness,
) -> None:
    writes = [put_if_absent(h, f"vm{i:03}") for i in range(300)]
    assert [len(b) for b in batches(writes)] == [119, 119, 62]  # the shared gate: sent once
    await h.store.put(h.k("p/vm150"), b"taken")  # this one lost its race
    before = await h.store.revision()
    done = await commit_all(h.store, writes)
    assert done == [i != 150 for i in range(300)]
    found = {kv.key: kv.value for kv in (await h.store.range(h.k("p/"))).kvs}
    assert len(found) == 300 and found[h.k("p/vm150")] == b"taken"
    # 3 batches, the failed one again one by one (119): fewer than a txn per write
    assert await h.store.revision() - before == 2 + 118


async def test_a_batch_stays_within_the_bytes_and_never_writes_a_key_twice(h: Harness) -> None:
    big = b"x" * (MAX_BYTES // 3)
    writes = [put_if_absent(h, f"big{i}", big) for i in range(4)]
    assert [len(b) for b in batches(writes)] == [2, 2]
    twice = [put_if_absent(h, "same"), put_if_absent(h, "other"), put_if_absent(h, "same")]
    assert batches(twice) == [[0, 1], [2]]
    assert await commit_all(h.store, writes + twice) == [True] * 4 + [True, True, False]
