"""The decode cache of whole-prefix reads (store/reads.DecodeCache): a read through it gives
exactly what a read without it gives, whatever happened to the keys in between (written,
rewritten with the same bytes, deleted and made again, corrupted, fixed), and decodes only
the values that changed since its last read."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hvcluster.models.base import encode
from hvcluster.models.vm import Placement
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from hvcluster.store.reads import CorruptReporter, DecodeCache, Decoded, read_kind
from tests.store.conftest import Harness

BAD = b'{"node": "n1", "epoch": "not a number"}'


def same(a: Decoded[Placement], b: Decoded[Placement]) -> None:
    assert a.present == b.present
    assert {n: (s.value, s.raw, s.mod_revision, s.key) for n, s in a.items.items()} == {
        n: (s.value, s.raw, s.mod_revision, s.key) for n, s in b.items.items()
    }
    assert [str(c) for c in a.corrupt] == [str(c) for c in b.corrupt]


async def test_only_changed_values_are_decoded_again(h: Harness) -> None:
    cache = DecodeCache()
    for i in range(5):
        await h.store.put(h.keys.placement(f"vm{i}"), encode(Placement(node="n1", epoch=1)))
    first = await read_kind(h.store, h.keys, "placements", Placement, cache=cache)
    assert (cache.decoded, cache.reused) == (5, 0)
    again = await read_kind(h.store, h.keys, "placements", Placement, cache=cache)
    assert (cache.decoded, cache.reused) == (5, 5)
    assert again.items["vm0"] is first.items["vm0"]  # the very value: not decoded again
    # the same bytes written again: a new revision, decoded again (its revision is new)
    await h.store.put(h.keys.placement("vm1"), encode(Placement(node="n1", epoch=1)))
    await h.store.put(h.keys.placement("vm2"), encode(Placement(node="n2", epoch=2)))
    await h.store.delete(h.keys.placement("vm3"))
    third = await read_kind(h.store, h.keys, "placements", Placement, cache=cache)
    assert (cache.decoded, cache.reused) == (7, 7)
    assert third.items["vm2"].value.node == "n2"
    assert "vm3" not in third.present
    same(third, await read_kind(h.store, h.keys, "placements", Placement))


async def test_a_corrupt_value_is_never_kept(h: Harness) -> None:
    cache = DecodeCache()
    report = CorruptReporter()
    key = h.keys.placement("vm1")
    await h.store.put(key, BAD)
    for _ in range(2):
        found = await read_kind(h.store, h.keys, "placements", Placement, report, cache)
        assert found.unreadable == {"vm1"} and len(found.corrupt) == 1
    assert (cache.decoded, cache.reused) == (2, 0)
    await h.store.put(key, encode(Placement(node="n1", epoch=3)))
    fixed = await read_kind(h.store, h.keys, "placements", Placement, report, cache)
    assert fixed.items["vm1"].value.epoch == 3 and not fixed.corrupt


NAMES = st.sampled_from(["a", "b", "c", "d"])
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), NAMES, st.integers(1, 3)),
        st.tuples(st.just("corrupt"), NAMES, st.just(0)),
        st.tuples(st.just("delete"), NAMES, st.just(0)),
        st.tuples(st.just("read"), st.just(""), st.just(0)),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS)
def test_a_cached_read_is_always_a_plain_read(steps: list[tuple[str, str, int]]) -> None:
    """Any sequence of writes: each read through the cache equals a read without it."""

    async def run() -> None:
        store, keys, cache, report = (
            MemoryStore(page_size=3),
            Keys("t"),
            DecodeCache(),
            CorruptReporter(),
        )
        for op, name, epoch in steps:
            key = keys.placement(name) if name else ""
            if op == "put":
                await store.put(key, encode(Placement(node="n1", epoch=epoch)))
            elif op == "corrupt":
                await store.put(key, BAD)
            elif op == "delete":
                await store.delete(key)
            cached = await read_kind(store, keys, "placements", Placement, report, cache)
            same(cached, await read_kind(store, keys, "placements", Placement, report))
        await store.close()

    asyncio.run(run())
