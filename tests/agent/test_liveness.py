"""A node's proof of life: the watchdog is fed only on confirmed keepalives, or on positive
evidence that nobody can act (etcd has no leader); a lost lease is replaced under a guard.

The liveness and its store run on a :class:`ManualClock` (the ``clock`` fixture): the tests'
waits move it, so seconds of keepalives and fences take milliseconds and every deadline is
exact."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from hvcluster.agent.liveness import NodeLiveness
from hvcluster.clock import ManualClock
from hvcluster.models.base import encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.vm import Placement
from hvcluster.store.base import Member, StoreHealth
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from hvcluster.watchdog.node import WatchdogFeeder
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(30)

CONFIG = ClusterConfig(
    lease_ttl_s=1.5,
    keepalive_interval_s=0.1,
    fence_after_s=0.8,
    recovery_margin_s=0.5,
    evidence_interval_s=0.2,
)


class RecordingFeeder(WatchdogFeeder):
    def __init__(self, run_dir: Path, clock: Callable[[], float] | None = None) -> None:
        super().__init__(run_dir, *(() if clock is None else (clock,)))
        self.deadlines: list[float] = []

    def feed(self, deadline: float) -> bool:
        self.deadlines.append(deadline)
        return True


class CutOffStore(MemoryStore):
    """A store this node cannot reach, while (unknown to it) the rest of etcd has a leader:
    keepalives fail, and health shows one member of three, following a leader."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock.now)
        clock.on_tick.append(self.expire_leases)
        self.cut = False

    async def health(self) -> StoreHealth:
        if not self.cut:
            return await super().health()
        members = (
            Member("a", 1, (), reachable=True, leader_id=2),
            Member("b", 2, (), reachable=False),
            Member("c", 3, (), reachable=False),
        )
        return StoreHealth(members=members, leader=None)

    async def keepalive(self, lease_id: int, timeout: float | None = None) -> float:
        if self.cut:
            from hvcluster.models.errors import StoreUnavailable

            raise StoreUnavailable("cut off")
        return await super().keepalive(lease_id, timeout)


def memory_store(clock: ManualClock) -> MemoryStore:
    """A store on ``clock``: its leases expire as the clock moves."""
    store = MemoryStore(clock.now)
    clock.on_tick.append(store.expire_leases)
    return store


@pytest.fixture
def clock() -> ManualClock:
    """The time of the node's liveness and its store: it moves only as the test waits."""
    return ManualClock()


async def _liveness(
    store: MemoryStore,
    tmp_path: Path,
    clock: ManualClock,
    local: dict[str, int] | None = None,
    killed: list[set[str]] | None = None,
) -> tuple[NodeLiveness, RecordingFeeder]:
    feeder = RecordingFeeder(tmp_path, clock.now)
    said = SAID.setdefault(id(store), [])

    async def kill(names: set[str]) -> None:
        if killed is not None:
            killed.append(names)
        for name in names:  # as the agent does: a killed VM is no longer ours
            (local or {}).pop(name, None)

    async def say(kind: str, reason: str) -> None:
        said.append(f"{kind}: {reason}")

    live = NodeLiveness(
        store,
        Keys("t"),
        "n1",
        CONFIG,
        feeder,
        lambda: dict(local or {}),
        kill,
        say,
        clock=clock.now,
        sleep=clock.sleep,
        wall=clock.wall,
    )
    await live.register()
    return live, feeder


SAID: dict[int, list[str]] = {}  # id(store) -> the events its liveness said


@pytest.fixture
async def running() -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks: list[asyncio.Task[None]] = []
    yield tasks
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_confirmed_keepalives_feed_the_watchdog(
    tmp_path: Path, running: list[asyncio.Task[None]], clock: ManualClock
) -> None:
    store = memory_store(clock)
    live, feeder = await _liveness(store, tmp_path, clock)
    running.append(asyncio.create_task(live.run()))
    await wait_for(
        lambda: len(feeder.deadlines) >= 5, 5, "five confirmed keepalives fed", clock=clock
    )
    assert feeder.deadlines[-1] > clock.now()  # always ahead: VMs may run
    assert not live.fenced


async def test_an_etcd_without_leader_is_not_a_node_failure(
    tmp_path: Path, running: list[asyncio.Task[None]], clock: ManualClock
) -> None:
    store = memory_store(clock)
    live, feeder = await _liveness(store, tmp_path, clock)
    running.append(asyncio.create_task(live.run()))
    await wait_for(lambda: live.confirmed_within(1.0), 5, "a confirmed keepalive", clock=clock)
    store.set_available(False)  # the whole store loses its leader
    lost = clock.now()
    # Evidence the moment to fence has long passed: a feed made 2 fence periods later.
    late = lost + 3 * CONFIG.fence_after_s
    await wait_for(
        lambda: feeder.deadlines[-1] >= late, 10, "a feed long after the loss", clock=clock
    )
    assert not live.fenced, "fed on evidence that nobody can act"
    assert feeder.deadlines[-1] > clock.now()
    store.set_available(True)
    ok = CONFIG.keepalive_interval_s * 3
    await wait_for(lambda: live.confirmed_within(ok), 5, "keepalives confirmed again", clock=clock)
    assert await store.get(Keys("t").alive("n1")) is not None
    said = SAID[id(store)]
    await wait_for(lambda: any("node.etcd_back" in x for x in said), 5, "an event", clock=clock)
    back = next(x for x in said if "node.etcd_back" in x)
    assert "kept its VMs on evidence" in back and "none of the 1 etcd members" in back


async def test_a_node_cut_off_stops_feeding_and_fences(
    tmp_path: Path, running: list[asyncio.Task[None]], clock: ManualClock
) -> None:
    store = CutOffStore(clock)
    live, feeder = await _liveness(store, tmp_path, clock)
    running.append(asyncio.create_task(live.run()))
    await wait_for(lambda: feeder.deadlines, 5, "a confirmed keepalive fed", clock=clock)
    store.cut = True
    cut_at = clock.now()
    await wait_for(lambda: live.fenced, CONFIG.fence_after_s + 5, "fenced", clock=clock)
    assert feeder.deadlines[-1] <= cut_at + CONFIG.fence_after_s
    assert max(feeder.deadlines) < clock.now()
    # on the manual clock, exact: fenced within a look (a keepalive interval) of the deadline
    assert clock.now() <= max(feeder.deadlines) + CONFIG.keepalive_interval_s + 0.05


async def test_a_lost_lease_is_replaced_only_if_placements_are_unchanged(
    tmp_path: Path, clock: ManualClock
) -> None:
    store = memory_store(clock)
    keys = Keys("t")
    rev = await store.put(keys.placement("vm-a"), encode(Placement(node="n1", epoch=1)))
    await store.put(keys.placement("vm-b"), encode(Placement(node="n1", epoch=1)))
    rev_b = (await store.get(keys.placement("vm-b"))).mod_revision  # type: ignore[union-attr]
    killed: list[set[str]] = []
    local = {"vm-a": rev, "vm-b": rev_b}
    live, _ = await _liveness(store, tmp_path, clock, local, killed)
    live.local_placements = lambda: dict(local)
    first = live.lease_id
    # While the node was away the controller moved vm-a.
    await store.revoke(first)
    await store.put(keys.placement("vm-a"), encode(Placement(node="n2", epoch=2)))
    task = asyncio.create_task(live.run())
    try:

        async def registered_again() -> bool:
            return live.lease_id != first and await store.get(keys.alive("n1")) is not None

        live.local_placements = lambda: {"vm-b": rev_b} if killed else {"vm-a": rev, "vm-b": rev_b}
        await wait_for(registered_again, 5, "registered again", clock=clock)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert killed == [{"vm-a"}]  # vm-b, unchanged, kept running
    assert local == {"vm-b": rev_b}


class AllCrashedStore(MemoryStore):
    """Every etcd member crashed (each host refuses the connection), then (``restarting``)
    two come back and hang, as members do until they have a quorum again."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock.now)
        clock.on_tick.append(self.expire_leases)
        self.clock = clock
        self.down = False
        self.restarting = False

    async def health(self) -> StoreHealth:
        if not self.down:
            return await super().health()
        silent = {1, 2} if self.restarting else set()
        members = tuple(
            Member(f"m{i}", i, (), reachable=False, refused=i not in silent) for i in (1, 2, 3)
        )
        return StoreHealth(members=members, leader=None)

    async def keepalive(self, lease_id: int, timeout: float | None = None) -> float:
        if self.down:
            await self.clock.sleep(3600)  # a connection attempt that never ends
        return await super().keepalive(lease_id, timeout)


async def test_with_every_member_down_a_node_feeds_a_lease_ttl_from_each_question(
    tmp_path: Path, running: list[asyncio.Task[None]], clock: ManualClock
) -> None:
    """Nobody leads: the deadline is the question's time + TTL (more than fence_after), asked
    while the keepalive still hangs; once members restart and only time out, feeding stops
    and the node fences within TTL of the last answer that proved nobody led."""
    store = AllCrashedStore(clock)
    live, feeder = await _liveness(store, tmp_path, clock)
    running.append(asyncio.create_task(live.run()))
    await wait_for(lambda: feeder.deadlines, 5, "a confirmed keepalive fed", clock=clock)
    store.down = True
    # Evidence that feeding went on: a feed from a question asked two TTLs after the crash.
    late = clock.now() + 3 * CONFIG.lease_ttl_s
    await wait_for(
        lambda: feeder.deadlines[-1] >= late, 15, "a feed long after the crash", clock=clock
    )
    now = clock.now()
    assert not live.fenced, "fed while nobody led"
    assert feeder.deadlines[-1] - now > CONFIG.fence_after_s  # a TTL, not fence_after
    assert feeder.deadlines[-1] <= now + CONFIG.lease_ttl_s
    store.restarting = True
    last = clock.now()
    await wait_for(lambda: live.fenced, CONFIG.lease_ttl_s + 5, "fenced", clock=clock)
    assert max(feeder.deadlines) <= last + CONFIG.lease_ttl_s
