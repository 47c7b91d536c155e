"""A node's proof of life: the watchdog is fed only on confirmed keepalives, or on positive
evidence that nobody can act (etcd has no leader); a lost lease is replaced under a guard."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hvcluster.agent.liveness import NodeLiveness
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
    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        self.deadlines: list[float] = []

    def feed(self, deadline: float) -> bool:
        self.deadlines.append(deadline)
        return True


class CutOffStore(MemoryStore):
    """A store this node cannot reach, while (unknown to it) the rest of etcd has a leader:
    keepalives fail, and health shows one member of three, following a leader."""

    def __init__(self) -> None:
        super().__init__()
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


async def _liveness(
    store: MemoryStore,
    tmp_path: Path,
    local: dict[str, int] | None = None,
    killed: list[set[str]] | None = None,
) -> tuple[NodeLiveness, RecordingFeeder]:
    feeder = RecordingFeeder(tmp_path)
    said = SAID.setdefault(id(store), [])

    async def kill(names: set[str]) -> None:
        if killed is not None:
            killed.append(names)
        for name in names:  # as the agent does: a killed VM is no longer ours
            (local or {}).pop(name, None)

    async def say(kind: str, reason: str) -> None:
        said.append(f"{kind}: {reason}")

    live = NodeLiveness(
        store, Keys("t"), "n1", CONFIG, feeder, lambda: dict(local or {}), kill, say
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
    tmp_path: Path, running: list[asyncio.Task[None]]
) -> None:
    store = MemoryStore()
    live, feeder = await _liveness(store, tmp_path)
    running.append(asyncio.create_task(live.run()))
    await wait_for(lambda: len(feeder.deadlines) >= 5, 5, "five confirmed keepalives fed")
    assert feeder.deadlines[-1] > time.monotonic()  # always ahead: VMs may run
    assert not live.fenced


async def test_an_etcd_without_leader_is_not_a_node_failure(
    tmp_path: Path, running: list[asyncio.Task[None]]
) -> None:
    store = MemoryStore()
    live, feeder = await _liveness(store, tmp_path)
    running.append(asyncio.create_task(live.run()))
    await wait_for(lambda: live.confirmed_within(1.0), 5, "a confirmed keepalive")
    store.set_available(False)  # the whole store loses its leader
    lost = time.monotonic()
    # Evidence the moment to fence has long passed: a feed made 2 fence periods later.
    late = lost + 3 * CONFIG.fence_after_s
    await wait_for(lambda: feeder.deadlines[-1] >= late, 10, "a feed long after the loss")
    assert not live.fenced, "fed on evidence that nobody can act"
    assert feeder.deadlines[-1] > time.monotonic()
    store.set_available(True)
    ok = CONFIG.keepalive_interval_s * 3
    await wait_for(lambda: live.confirmed_within(ok), 5, "keepalives confirmed again")
    assert await store.get(Keys("t").alive("n1")) is not None
    said = SAID[id(store)]
    await wait_for(lambda: any("node.etcd_back" in x for x in said), 5, "an event")
    back = next(x for x in said if "node.etcd_back" in x)
    assert "kept its VMs on evidence" in back and "none of the 1 etcd members" in back


async def test_a_node_cut_off_stops_feeding_and_fences(
    tmp_path: Path, running: list[asyncio.Task[None]]
) -> None:
    store = CutOffStore()
    live, feeder = await _liveness(store, tmp_path)
    running.append(asyncio.create_task(live.run()))
    await wait_for(lambda: feeder.deadlines, 5, "a confirmed keepalive fed")
    store.cut = True
    cut_at = time.monotonic()
    await wait_for(lambda: live.fenced, CONFIG.fence_after_s + 5, "fenced")
    assert feeder.deadlines[-1] <= cut_at + CONFIG.fence_after_s
    assert max(feeder.deadlines) < time.monotonic()


async def test_a_lost_lease_is_replaced_only_if_placements_are_unchanged(
    tmp_path: Path,
) -> None:
    store = MemoryStore()
    keys = Keys("t")
    rev = await store.put(keys.placement("vm-a"), encode(Placement(node="n1", epoch=1)))
    await store.put(keys.placement("vm-b"), encode(Placement(node="n1", epoch=1)))
    rev_b = (await store.get(keys.placement("vm-b"))).mod_revision  # type: ignore[union-attr]
    killed: list[set[str]] = []
    local = {"vm-a": rev, "vm-b": rev_b}
    live, _ = await _liveness(store, tmp_path, local, killed)
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
        await wait_for(registered_again, 5, "registered again")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert killed == [{"vm-a"}]  # vm-b, unchanged, kept running
    assert local == {"vm-b": rev_b}


class AllCrashedStore(MemoryStore):
    """Every etcd member crashed (each host refuses the connection), then (``restarting``)
    two come back and hang, as members do until they have a quorum again."""

    def __init__(self) -> None:
        super().__init__()
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
            await asyncio.sleep(3600)  # a connection attempt that never ends
        return await super().keepalive(lease_id, timeout)


async def test_with_every_member_down_a_node_feeds_a_lease_ttl_from_each_question(
    tmp_path: Path, running: list[asyncio.Task[None]]
) -> None:
    """Nobody leads: the deadline is the question's time + TTL (more than fence_after), asked
    while the keepalive still hangs; once members restart and only time out, feeding stops
    and the node fences within TTL of the last answer that proved nobody led."""
    store = AllCrashedStore()
    live, feeder = await _liveness(store, tmp_path)
    running.append(asyncio.create_task(live.run()))
    await wait_for(lambda: feeder.deadlines, 5, "a confirmed keepalive fed")
    store.down = True
    # Evidence that feeding went on: a feed from a question asked two TTLs after the crash.
    late = time.monotonic() + 3 * CONFIG.lease_ttl_s
    await wait_for(lambda: feeder.deadlines[-1] >= late, 15, "a feed long after the crash")
    now = time.monotonic()
    assert not live.fenced, "fed while nobody led"
    assert feeder.deadlines[-1] - now > CONFIG.fence_after_s  # a TTL, not fence_after
    assert feeder.deadlines[-1] <= now + CONFIG.lease_ttl_s
    store.restarting = True
    last = time.monotonic()
    await wait_for(lambda: live.fenced, CONFIG.lease_ttl_s + 5, "fenced")
    assert max(feeder.deadlines) <= last + CONFIG.lease_ttl_s
