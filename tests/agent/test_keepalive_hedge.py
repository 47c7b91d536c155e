"""Hedged keepalives: one stuck on a frozen etcd leader does not hold up the node's proof of
life; the first keepalive sent after the election counts, with its own send time.

The store is a memory store whose keepalives, while its "leader" is frozen, hang as etcd's
do (a member forwards them to the frozen leader and waits): one sent before the election
never answers, one sent after it answers at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from hvcluster.agent.keepalive_hedge import hedged_keepalive
from hvcluster.models.errors import LeaseLost, StoreUnavailable
from hvcluster.store.memory_store import MemoryStore
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(30)

INTERVAL = 0.5
HEDGE = 0.1


class FrozenLeaderStore(MemoryStore):
    """Keepalives sent while ``frozen`` hang until cancelled; later ones answer."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = False
        self.refusing = False
        self.sent: list[float] = []
        self.cancelled = 0

    async def keepalive(self, lease_id: int, timeout: float | None = None) -> float:
        self.sent.append(time.monotonic())
        if self.refusing:
            raise StoreUnavailable("connection refused")
        if self.frozen:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return await super().keepalive(lease_id, timeout)


async def test_a_keepalive_sent_after_the_election_counts_while_the_first_hangs() -> None:
    store = FrozenLeaderStore()
    lease = await store.grant(5)
    store.frozen = True

    async def elect() -> float:
        await asyncio.sleep(0.25)
        store.frozen = False
        return time.monotonic()

    election = asyncio.create_task(elect())
    confirmed = await hedged_keepalive(
        store, lease.id, interval=INTERVAL, hedge_after=HEDGE, clock=time.monotonic
    )
    elected = await election
    # It was sent after the election (a stuck one would have been sent before), and it is
    # the first such: sent within one hedge of the election.
    assert elected <= confirmed.sent < elected + HEDGE + 0.05, (store.sent, elected)
    assert confirmed.ttl == 5
    assert len(store.sent) >= 3  # the first, stuck; hedges while frozen; the answered one
    stuck = len(store.sent) - 1
    await wait_for(lambda: store.cancelled == stuck, 5, "every stuck keepalive dropped")


async def test_keepalives_that_fail_fast_end_the_round_without_hedges() -> None:
    store = FrozenLeaderStore()
    lease = await store.grant(5)
    store.refusing = True
    with pytest.raises(StoreUnavailable, match="refused"):
        await hedged_keepalive(
            store, lease.id, interval=INTERVAL, hedge_after=HEDGE, clock=time.monotonic
        )
    assert len(store.sent) == 1  # an outage costs etcd no extra requests


async def test_a_round_gives_up_after_an_interval_of_hedges() -> None:
    store = FrozenLeaderStore()
    lease = await store.grant(5)
    store.frozen = True
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        await hedged_keepalive(
            store, lease.id, interval=INTERVAL, hedge_after=HEDGE, clock=time.monotonic
        )
    # One keepalive every hedge while the interval lasts, none after; each gave up at
    # its own deadline.
    assert len(store.sent) == round(INTERVAL / HEDGE), store.sent
    assert all(t - began < INTERVAL for t in store.sent)


async def test_a_lease_found_gone_is_said_at_once() -> None:
    store = FrozenLeaderStore()
    with pytest.raises(LeaseLost):
        await hedged_keepalive(
            store, 12345, interval=INTERVAL, hedge_after=HEDGE, clock=time.monotonic
        )
