"""Contract: guarding hundreds of keys in one txn (etcd allows 128 compares)."""

from __future__ import annotations

from hvcluster.store.base import Put
from hvcluster.store.guards import MAX_EACH, keys_unchanged
from tests.store.conftest import Harness


async def placements(h: Harness, count: int) -> dict[str, int]:
    for start in range(0, count, 100):
        ops = [Put(h.k(f"p/vm{i:03}"), b"n1") for i in range(start, min(count, start + 100))]
        await h.store.txn([], ops)
    return {kv.key: kv.mod_revision for kv in (await h.store.range(h.k("p/"))).kvs}


async def test_hundreds_of_keys_guarded_in_one_txn(h: Harness) -> None:
    known = await placements(h, 300)
    alive = Put(h.k("alive"), b"me")
    guard = await keys_unchanged(h.store, h.k("p/"), known)
    assert guard.changed == set() and len(guard.compares) == 1
    assert (await h.store.txn(guard.compares, [alive])).succeeded

    await h.store.put(h.k("p/vm123"), b"n2")  # moved elsewhere before the read
    guard = await keys_unchanged(h.store, h.k("p/"), known)
    assert guard.changed == {h.k("p/vm123")}
    assert not (await h.store.txn(guard.compares, [alive])).succeeded, "changed: no commit"

    guard = await keys_unchanged(h.store, h.k("p/"), {**known, h.k("p/vm123"): 0})
    assert guard.changed == {h.k("p/vm123")}, "a key expected absent that exists"
    assert not (await h.store.txn(guard.compares, [])).succeeded
    fresh = {kv.key: kv.mod_revision for kv in (await h.store.range(h.k("p/"))).kvs}
    guard = await keys_unchanged(h.store, h.k("p/"), fresh)
    await h.store.delete(h.k("p/vm007"))  # after the read: not seen (see the module doc)
    assert (await h.store.txn(guard.compares, [])).succeeded
    await h.store.put(h.k("p/vm008"), b"n3")  # after the read: the txn must fail
    assert not (await h.store.txn(guard.compares, [alive])).succeeded


async def test_few_keys_are_compared_one_by_one(h: Harness) -> None:
    known = await placements(h, MAX_EACH)
    guard = await keys_unchanged(h.store, h.k("p/"), known)
    assert len(guard.compares) == MAX_EACH
    await h.store.put(h.k("p/other"), b"not ours")
    assert (await h.store.txn(guard.compares, [])).succeeded, "another key does not matter"
    await h.store.put(h.k("p/vm001"), b"n2")
    assert not (await h.store.txn(guard.compares, [])).succeeded
