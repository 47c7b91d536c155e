"""Draining a node in an in-process cluster (real agents and controller, sim VMs), and
resuming it with failback, through the real API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hvcluster.models.base import decode
from hvcluster.models.config import MigrationSettings
from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.models.migration import Migration
from tests.sim.cluster import FAST, SimCluster, node_record, with_api

pytestmark = pytest.mark.timeout(90)

# 256 MiB at 128 MiB/s: each move takes a couple of seconds, so moves overlap.
DRAIN = FAST.model_copy(
    update={"migration": MigrationSettings(max_bandwidth_mib_s=128, max_parallel_per_node=2)}
)


class Concurrency:
    """The most migrations under way at once per node, from a watch on every record."""

    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster
        self.active: dict[str, Migration] = {}
        self.most: dict[str, int] = {}
        self.task: asyncio.Task[None] | None = None

    async def _follow(self, start: int) -> None:
        async for event in self.cluster.store.watch(self.cluster.keys.prefix("migrations"), start):
            if not event.value:
                continue
            rec = decode(Migration, event.key, event.value)
            if rec.active:
                self.active[rec.id] = rec
            else:
                self.active.pop(rec.id, None)
            for node in {m.source for m in self.active.values()} | {
                m.target for m in self.active.values() if m.target
            }:
                n = sum(1 for m in self.active.values() if node in (m.source, m.target))
                self.most[node] = max(self.most.get(node, 0), n)

    async def __aenter__(self) -> Concurrency:
        rev = await self.cluster.store.revision()
        self.task = asyncio.create_task(self._follow(rev + 1))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[SimCluster, httpx.AsyncClient]]:
    cluster = SimCluster(tmp_path, DRAIN)
    async with with_api(cluster) as api:
        yield cluster, api


async def test_drain_four_vms_two_at_a_time_then_resume_with_failback(
    setup: tuple[SimCluster, httpx.AsyncClient],
) -> None:
    cluster, api = setup
    await cluster.start("n1", "n2", "n3")
    vms = [f"vm-{i}" for i in range(4)]
    for vm in vms:
        await cluster.create_vm(vm, ha={"preferred_owners": ["n1"]})
    for vm in vms:
        assert await cluster.wait_running(vm) == "n1"

    async with Concurrency(cluster) as seen:
        r = await api.post("/nodes/n1/drain", json={"reason": "maintenance"})
        assert r.status_code == 202, r.text

        async def paused() -> bool:
            return (await node_record(cluster, "n1")).admin_state is NodeAdminState.PAUSED

        await cluster.wait_for(paused, 60, "n1 drained and paused")
    assert seen.most["n1"] == 2, seen.most  # the limit, and it was used
    assert all(n <= 2 for n in seen.most.values()), seen.most
    where = {vm: await cluster.running_on(vm) for vm in vms}
    assert all(node in ("n2", "n3") for node in where.values()), where
    assert "drain of n1 is complete" in (await node_record(cluster, "n1")).admin_reason
    assert await cluster.event_list("node.drained", "node/n1")

    r = await api.post("/nodes/n1/resume", json={"failback": "immediate"})
    assert r.status_code == 202, r.text

    async def all_back() -> bool:
        return all([await cluster.running_on(vm) == "n1" for vm in vms])

    await cluster.wait_for(all_back, 60, "every VM back on n1")


async def test_a_vm_that_cannot_move_live_is_moved_quick(
    setup: tuple[SimCluster, httpx.AsyncClient],
) -> None:
    cluster, api = setup
    await cluster.add_volume("csv")  # where its quick migration saves the state
    await cluster.start("n1", "n2")
    await cluster.create_vm("stubborn", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("stubborn") == "n1"
    cluster.drivers["n1"].fail_next_migration("stubborn", "cpu flags differ")
    assert (await api.post("/nodes/n1/drain")).status_code == 202

    async def paused() -> bool:
        return (await node_record(cluster, "n1")).admin_state is NodeAdminState.PAUSED

    await cluster.wait_for(paused, 60, "n1 drained and paused")
    assert await cluster.wait_running("stubborn", 10) == "n2"
    kinds = [(m["kind"], m["state"]) for m in (await api.get("/migrations")).json()["migrations"]]
    assert kinds == [("live", "failed"), ("quick", "done")]


async def test_a_vm_that_cannot_move_live_stays_when_no_volume_is_shared(
    setup: tuple[SimCluster, httpx.AsyncClient],
) -> None:
    """The fallback is quick, but a quick migration needs a volume both nodes see for the
    state: none, so the VM stays and the drain says why."""
    cluster, api = setup
    await cluster.start("n1", "n2")
    await cluster.create_vm("stubborn", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("stubborn") == "n1"
    cluster.drivers["n1"].fail_next_migration("stubborn", "cpu flags differ")
    assert (await api.post("/nodes/n1/drain")).status_code == 202

    async def paused() -> bool:
        return (await node_record(cluster, "n1")).admin_state is NodeAdminState.PAUSED

    await cluster.wait_for(paused, 60, "n1 drained and paused")
    assert await cluster.running_on("stubborn") == "n1"
    kinds = [(m["kind"], m["state"]) for m in (await api.get("/migrations")).json()["migrations"]]
    assert kinds == [("live", "failed")]
    [stay] = await cluster.event_list("drain.stay", "vm/stubborn")
    assert "n1 and n2 share no volume to save the VM's state on" in stay.reason
    assert "stayed: stubborn" in (await node_record(cluster, "n1")).admin_reason


async def test_a_drain_move_whose_target_is_paused_midway_moves_live_elsewhere(
    setup: tuple[SimCluster, httpx.AsyncClient],
) -> None:
    """An admin pauses the target while the drain's live move to it is under way: that move
    fails (the VM never lands on the paused node, not even by the source's own flip), and
    the drain moves it live again to a node that is open, not by its quick fallback."""
    cluster, api = setup
    await cluster.start("n1", "n2", "n3")
    await cluster.create_vm("web", ha={"preferred_owners": ["n1", "n2", "n3"]})
    assert await cluster.wait_running("web") == "n1"
    assert (await api.post("/nodes/n1/drain")).status_code == 202

    async def moving_to_n2() -> bool:
        found = (await api.get("/migrations")).json()["migrations"]
        return any(m["target"] == "n2" and m["state"] == "transferring" for m in found)

    await cluster.wait_for(moving_to_n2, 20, "web's move to n2 under way")
    r = await api.post("/nodes/n2/pause", json={"reason": "firmware update"})
    assert r.status_code == 202, r.text

    async def paused() -> bool:
        return (await node_record(cluster, "n1")).admin_state is NodeAdminState.PAUSED

    await cluster.wait_for(paused, 60, "n1 drained and paused")
    assert await cluster.wait_running("web", 10) == "n3"
    moves = (await api.get("/migrations")).json()["migrations"]
    assert [(m["kind"], m["target"], m["state"]) for m in moves] == [
        ("live", "n2", "failed"),
        ("live", "n3", "done"),
    ]
    assert "the target node n2 is paused: firmware update" in moves[0]["reason"]
    placed = [e.reason for e in await cluster.event_list("vm.placed", "vm/web")]
    assert not any(" on n2 " in why for why in placed), placed
