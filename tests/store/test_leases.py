"""Contract: leases expire (exactly at TTL on the memory clock, within TTL + 1 s on etcd), take
their keys with them (a watch sees the DELETE), are kept by keepalives, and say LeaseLost."""

from __future__ import annotations

import asyncio
import time

import pytest

from hvcluster.models.errors import LeaseLost
from hvcluster.store.base import EventType
from hvcluster.store.lease import LeaseKeeper
from tests.store.conftest import Collector, Harness

TTL = 2.0


async def wait_gone(h: Harness, key: str, limit: float) -> float:
    """Seconds (of h's clock) until ``key`` is gone; fails after ``limit`` seconds."""
    start = h.clock()
    while await h.store.get(key) is not None:
        assert h.clock() - start <= limit, f"{key} still there after {limit}s"
        await h.advance(0.05)
    return h.clock() - start


async def test_expiry_deletes_bound_keys_and_a_watch_sees_it(h: Harness) -> None:
    s = h.store
    granted_at = h.clock()
    lease = await s.grant(TTL)
    assert lease.ttl == TTL
    await s.put(h.k("bound"), b"1", lease.id)
    rev = await s.put(h.k("free"), b"2")
    watch = Collector(s, h.prefix, rev + 1)
    try:
        if h.exact_time:
            await h.advance(TTL - 0.001)
            assert await s.get(h.k("bound")) is not None
            await h.advance(0.001)
            assert await s.get(h.k("bound")) is None, "gone exactly at TTL"
        else:
            await h.advance(TTL - 0.5)
            assert await s.get(h.k("bound")) is not None, "gone before its TTL"
            await wait_gone(h, h.k("bound"), limit=3.0)
            assert time.monotonic() - granted_at <= TTL + 1.0
        events = await watch.wait_for(lambda evs: len(evs) >= 1)
    finally:
        await watch.stop()
    assert [(e.type, e.key) for e in events] == [(EventType.DELETE, h.k("bound"))]
    assert await s.get(h.k("free")) is not None
    with pytest.raises(LeaseLost):
        await s.keepalive(lease.id)
    with pytest.raises(LeaseLost):
        await s.lease_ttl(lease.id)


async def test_keepalives_keep_the_keys(h: Harness) -> None:
    s = h.store
    lease = await s.grant(TTL)
    await s.put(h.k("kept"), b"1", lease.id)
    for _ in range(6):  # 3 s: longer than the TTL
        await h.advance(0.5)
        assert await s.keepalive(lease.id) == TTL
    assert await s.get(h.k("kept")) is not None
    assert 0 < await s.lease_ttl(lease.id) <= TTL
    await wait_gone(h, h.k("kept"), limit=TTL + 1.5)


async def test_revoke_deletes_at_once_and_is_idempotent(h: Harness) -> None:
    s = h.store
    lease = await s.grant(30)
    for i in range(3):
        await s.put(h.k(f"r/{i}"), b"x", lease.id)
    before = await s.revision()
    await s.revoke(lease.id)
    assert (await s.range(h.k("r/"))).kvs == ()
    assert await s.revision() == before + 1, "a revoke deletes its keys in one revision"
    await s.revoke(lease.id)  # gone already: not an error
    with pytest.raises(LeaseLost):
        await s.keepalive(lease.id)


async def test_a_key_rebound_to_another_lease_follows_the_new_one(h: Harness) -> None:
    s = h.store
    first, second = await s.grant(30), await s.grant(30)
    await s.put(h.k("moved"), b"1", first.id)
    await s.put(h.k("moved"), b"2", second.id)
    await s.revoke(first.id)
    assert await s.get(h.k("moved")) is not None
    await s.revoke(second.id)
    assert await s.get(h.k("moved")) is None


async def test_lease_keeper_keeps_its_lease_and_knows_how_fresh_it_is(h: Harness) -> None:
    s = h.store
    keeper = LeaseKeeper(s, TTL, 0.5, clock=h.clock, sleep=h.sleep)
    lease_id = await keeper.start()
    try:
        await s.put(h.k("alive"), b"1", lease_id)
        await h.advance(2 * TTL)
        assert await s.get(h.k("alive")) is not None
        assert keeper.confirmed_within(1.0)
        assert keeper.certainly_alive()
        assert keeper.last_confirmed_sent is not None
        assert keeper.last_confirmed_sent >= h.clock() - 1.0
    finally:
        await keeper.stop()
    assert await s.get(h.k("alive")) is None, "stop() revokes"
    assert not keeper.alive


async def test_lease_keeper_reports_a_lost_lease(h: Harness) -> None:
    s = h.store
    lost: list[LeaseLost] = []
    keeper = LeaseKeeper(s, TTL, 0.5, on_lost=lost.append, clock=h.clock, sleep=h.sleep)
    lease_id = await keeper.start()
    try:
        await s.revoke(lease_id)  # as an expiry seen from outside would
        await h.advance(0.6)
        async with asyncio.timeout(5):
            await keeper.lost.wait()
        assert len(lost) == 1
        assert not keeper.confirmed_within(60)
        assert not keeper.certainly_alive()
    finally:
        await keeper.stop()


async def test_stop_renewing_lets_the_lease_run_out_without_awaiting_anything(h: Harness) -> None:
    """What an interrupted shutdown relies on: one call, no await, and renewal ends."""
    s = h.store
    keeper = LeaseKeeper(s, TTL, 0.5, clock=h.clock, sleep=h.sleep)
    lease_id = await keeper.start()
    try:
        await s.put(h.k("alive"), b"1", lease_id)
        await h.advance(1.0)
        keeper.stop_renewing()
        assert await wait_gone(h, h.k("alive"), 2 * TTL) <= TTL + 1.0
    finally:
        await keeper.stop(revoke=False)
