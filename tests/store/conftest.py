"""The contract suite runs every test on both backends through a :class:`Harness`.

* ``memory``: a MemoryStore on a ManualClock. Time moves only when a test calls
  ``h.advance``, so lease expiry is exact.
* ``etcd``: an EtcdStore on a real etcd (one per session); ``h.advance`` really sleeps.
* ``etcd-tls``: the same over TLS, with a client certificate, as the lab and real hosts run.

Each test works under its own key prefix, so tests sharing the session's etcd never meet.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from hvcluster.lab.etcd import EtcdCluster
from hvcluster.store.base import Store, WatchEvent
from hvcluster.store.clock import ManualClock, Now, Sleep
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from tests.etcd_fixtures import etcd_private, etcd_session, etcd_tls_session, store_tls

__all__ = ["etcd_private", "etcd_session", "etcd_tls_session"]


@dataclass
class Harness:
    kind: str
    store: MemoryStore | EtcdStore
    clock: Now
    sleep: Sleep
    advance: Callable[[float], Awaitable[None]]
    prefix: str
    keys: Keys

    @property
    def exact_time(self) -> bool:
        return self.kind == "memory"

    def k(self, name: str) -> str:
        return self.prefix + name

    async def compact(self, revision: int) -> None:
        await self.store.compact(revision)


MEMORY_PAGE = 7  # memory range reads come in pages (other tasks run between), as etcd's


async def memory_harness() -> Harness:
    clock = ManualClock()
    store = MemoryStore(clock, page_size=MEMORY_PAGE)
    clock.on_tick.append(store.expire_leases)
    cluster = f"t{uuid.uuid4().hex[:8]}"
    return Harness(
        "memory", store, clock, clock.sleep, clock.advance, f"/t/{cluster}/", Keys(cluster)
    )


def etcd_harness(cluster: EtcdCluster) -> Harness:
    name = f"t{uuid.uuid4().hex[:8]}"
    return Harness(
        "etcd",
        EtcdStore(cluster.endpoints, timeout=5.0, tls=store_tls(cluster)),
        time.monotonic,
        asyncio.sleep,
        asyncio.sleep,
        f"/t/{name}/",
        Keys(name),
    )


@pytest.fixture(params=["memory", "etcd", "etcd-tls"])
async def h(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        harness = await memory_harness()
    elif request.param == "etcd":
        harness = etcd_harness(request.getfixturevalue("etcd_session"))
    else:
        harness = etcd_harness(request.getfixturevalue("etcd_tls_session"))
    try:
        yield harness
    finally:
        await harness.store.close()


async def collect(
    store: Store, prefix: str, start: int, n: int, timeout: float = 10.0
) -> list[WatchEvent]:
    """The first ``n`` events of a watch (fails the test if they do not come in time)."""
    seen: list[WatchEvent] = []
    async with asyncio.timeout(timeout):
        async for ev in store.watch(prefix, start):
            seen.append(ev)
            if len(seen) >= n:
                break
    return seen


class Collector:
    """A watch running in the background, keeping every event it sees."""

    def __init__(self, store: Store, prefix: str, start: int) -> None:
        self.events: list[WatchEvent] = []
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(store, prefix, start))

    async def _run(self, store: Store, prefix: str, start: int) -> None:
        try:
            async for ev in store.watch(prefix, start):
                self.events.append(ev)
                self._changed.set()
        except Exception as e:  # kept for the test to see
            self.error = e
            self._changed.set()

    async def wait_for(
        self, predicate: Callable[[list[WatchEvent]], bool], timeout: float = 10.0
    ) -> list[WatchEvent]:
        async with asyncio.timeout(timeout):
            while not predicate(self.events):
                if self.error is not None:
                    raise self.error
                self._changed.clear()
                await self._changed.wait()
        return self.events

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
