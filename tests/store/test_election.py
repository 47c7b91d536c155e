"""Contract: leader election never has two leaders, and replaces one that resigns or dies."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from hvcluster.clock import settle
from hvcluster.models.errors import LeaseLost
from hvcluster.store.election import Election
from hvcluster.store.lease import LeaseKeeper
from tests.store.conftest import Harness
from tests.waiting import wait_for

TTL = 2.0


async def candidate(h: Harness, name: str = "race") -> Election:
    keeper = LeaseKeeper(h.store, TTL, 0.5, clock=h.clock, sleep=h.sleep)
    await keeper.start()
    return Election(h.store, keeper, name, h.keys)


async def standing(e: Election, n: int) -> None:
    """Wait until ``n`` candidates stand in ``e``'s election (their keys written): evidence
    that the last one has made its move and waits its turn."""

    async def counted() -> bool:
        return len((await e.store.range(e.prefix)).kvs) >= n

    await wait_for(counted, 5, f"{n} candidates standing")


async def stop(*elections: Election) -> None:
    for e in elections:
        await e.resign()
        await e.keeper.stop()


@pytest.mark.parametrize("n", [2, 3])
async def test_racing_candidates_never_lead_at_once(h: Harness, n: int) -> None:
    rounds = 100
    holder: list[str] = []
    wins: dict[str, int] = {}
    elections = [await candidate(h) for _ in range(n)]

    async def run(name: str, e: Election) -> None:
        for _ in range(rounds):
            await e.campaign(name)
            assert holder == [], f"{name} leads while {holder} does"
            holder.append(name)
            assert e.is_leader
            assert await e.leader() == name  # a store round trip while leading
            assert holder == [name]
            holder.remove(name)
            wins[name] = wins.get(name, 0) + 1
            await e.resign()
            assert not e.is_leader

    try:
        async with asyncio.timeout(90):
            await asyncio.gather(*(run(f"c{i}", e) for i, e in enumerate(elections)))
    finally:
        await stop(*elections)
    assert wins == {f"c{i}": rounds for i in range(n)}


async def test_a_resigned_leader_is_replaced_and_observers_see_it(h: Harness) -> None:
    a, b = await candidate(h, "ctl"), await candidate(h, "ctl")
    seen: list[str | None] = []
    changed = asyncio.Event()

    async def observe() -> None:
        async for leader in a.observe():
            seen.append(leader)
            changed.set()

    observer = asyncio.create_task(observe())
    try:
        await a.campaign("a")
        b_wins = asyncio.create_task(b.campaign("b"))
        await standing(b, 2)
        await settle()  # b reads its predecessor and waits on it: a few loop turns
        assert not b_wins.done(), "b must wait while a leads"
        assert a.is_leader and not b.is_leader
        await a.resign()
        async with asyncio.timeout(10):
            await b_wins
        assert b.is_leader and not a.is_leader
        assert not a.lost.is_set(), "a resignation is not a loss"
        async with asyncio.timeout(10):
            while seen[-1:] != ["b"]:
                changed.clear()
                await changed.wait()
        assert "a" in seen and seen.index("a") < seen.index("b")
    finally:
        observer.cancel()
        await asyncio.gather(observer, return_exceptions=True)
        await stop(a, b)


async def test_a_leader_whose_lease_expires_is_replaced(h: Harness) -> None:
    a, b = await candidate(h, "ctl"), await candidate(h, "ctl")
    try:
        await a.campaign("a")
        b_wins = asyncio.create_task(b.campaign("b"))
        # a hangs: its keepalives stop, its lease runs out.
        await a.keeper.stop(revoke=False)
        await h.advance(TTL - 0.5)
        assert not b_wins.done()
        waited = 0.0
        while not b_wins.done():
            # Never two leaders: a stops trusting its lead before b can have it.
            assert not (a.is_leader and b.is_leader)
            await h.advance(0.1)
            waited += 0.1
            assert waited < 5, "b never took over"
        await b_wins
        assert b.is_leader
        assert not a.is_leader
        async with asyncio.timeout(5):
            await a.lost.wait()
    finally:
        with contextlib.suppress(LeaseLost):
            await stop(a, b)


async def test_campaigning_with_a_lost_lease_fails(h: Harness) -> None:
    a, b = await candidate(h, "ctl"), await candidate(h, "ctl")
    try:
        await a.campaign("a")
        b_wins = asyncio.create_task(b.campaign("b"))
        await standing(b, 2)
        await h.store.revoke(b.keeper.lease_id)
        await h.advance(0.6)  # b's keeper notices at its next keepalive
        with pytest.raises(LeaseLost):
            async with asyncio.timeout(10):
                await b_wins
        assert a.is_leader
    finally:
        await stop(a, b)
