"""Helpers for migration tests in the in-process cluster: request a move as the API does,
read records, and watch every state a record goes through."""

from __future__ import annotations

import asyncio
import contextlib

from hvcluster.models.base import decode
from hvcluster.models.config import MigrationSettings
from hvcluster.models.lifecycle import MigrationState
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.store.migrations import create_migration
from tests.sim.cluster import FAST, SimCluster

# 256 MiB at 64 MiB/s: a transfer takes a few seconds, long enough to act mid-way.
SLOW = FAST.model_copy(update={"migration": MigrationSettings(max_bandwidth_mib_s=64)})


async def move(
    cluster: SimCluster, vm: str, to: str = "", kind: MigrationKind = MigrationKind.LIVE
) -> Migration:
    placement = await cluster.placement(vm)
    assert placement is not None, f"{vm} is not placed"
    rec = await create_migration(
        cluster.store, cluster.keys, vm, placement.node, to, placement.epoch, kind, "test"
    )
    assert rec is not None
    return rec


async def record(cluster: SimCluster, mid: str) -> Migration:
    kv = await cluster.store.get(cluster.keys.migration(mid))
    assert kv is not None
    return decode(Migration, kv.key, kv.value)


async def wait_state(
    cluster: SimCluster, mid: str, *states: MigrationState, timeout: float = 20
) -> Migration:
    async def reached() -> Migration | None:
        rec = await record(cluster, mid)
        return rec if rec.state in states else None

    got: Migration = await cluster.wait_for(reached, timeout, f"{mid} in {states}")
    return got


class StateTrail:
    """Every state a record was written with, in order (from a watch: nothing is missed)."""

    def __init__(self, cluster: SimCluster, mid: str) -> None:
        self.cluster, self.mid = cluster, mid
        self.states: list[MigrationState] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        rec = await record(self.cluster, self.mid)
        self.states.append(rec.state)
        rev = await self.cluster.store.revision()
        self._task = asyncio.create_task(self._follow(rev + 1))

    async def _follow(self, start: int) -> None:
        key = self.cluster.keys.migration(self.mid)
        async for event in self.cluster.store.watch(key, start):
            if not event.value:
                continue
            state = decode(Migration, event.key, event.value).state
            if state != self.states[-1]:
                self.states.append(state)

    async def stop(self) -> list[MigrationState]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.states
