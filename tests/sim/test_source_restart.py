"""The source agent restarts while it holds the paused copy after its flip: QEMU's measures
of the transfer went with the old agent. The new agent marks the downtime unknown (saying
why), fills the total from the target's resume time, and discards the paused copy."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from hvcluster.agent.config import AgentConfig
from hvcluster.agent.daemon import Daemon, cancel_all
from hvcluster.clock import SYSTEM
from hvcluster.drivers.sim import SimDriver
from hvcluster.drivers.sim.links import SimHostLinks
from hvcluster.drivers.sim.model import SimParams
from hvcluster.drivers.sim.state import SimHost
from hvcluster.models.base import decode
from hvcluster.models.lifecycle import MigrationState, VMState
from hvcluster.models.migration import Migration
from hvcluster.models.migration_times import TIMES_LOST
from hvcluster.watchdog.node import MemoryWatchdog
from tests.sim.cluster import SimCluster
from tests.sim.moves import move, record

pytestmark = pytest.mark.timeout(60)
_M = MigrationState


async def start_with_run_dir(cluster: SimCluster, name: str) -> None:
    """Node ``name`` with a sim driver whose VMs are placeholder processes under a run dir:
    they outlive their agent, and the next agent's driver re-attaches to them (as QEMU)."""
    cfg = AgentConfig(node=name, cluster="sim", run_dir=cluster.tmp / name, driver="sim")
    driver = SimDriver(
        host=SimHost(cpus=cluster.cpus, memory_mib=8192, check_disks=False),
        params=SimParams(boot_s=0.3, shutdown_s=0.2),
        run_dir=cluster.tmp / name / "sim",
        clock=cluster.clock,
    )
    links = cluster.links[name] = SimHostLinks(driver)
    daemon = Daemon(
        cfg, store=cluster.store, driver=driver, serve_api=False, links=links,
        watchdog=MemoryWatchdog(cluster.clock.now) if cluster.clock else MemoryWatchdog(),
        clock=cluster.clock or SYSTEM,
    )  # fmt: skip
    cluster.daemons[name], cluster.drivers[name] = daemon, driver
    cluster.tasks[name] = asyncio.create_task(daemon.run(), name=f"daemon-{name}")
    await cluster.wait_for(lambda: cluster.alive(name), 10, f"{name} to register")


async def test_a_source_agent_restarted_after_its_flip_completes_the_record(
    cluster: SimCluster,
) -> None:
    await cluster.start()
    await start_with_run_dir(cluster, "n1")
    await cluster.create_vm("web", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("web") == "n1"
    await cluster.start_node("n2")
    rec = await move(cluster, "web", "n2")

    # The agent on n1 goes away the moment its flip commits (it holds the paused copy then,
    # and writes nothing until the target has run the VM).
    stopped = asyncio.Event()

    async def stop_source_at_the_flip() -> None:
        start = await cluster.store.revision()
        async for event in cluster.store.watch(cluster.keys.migration(rec.id), start):
            if event.value and decode(Migration, event.key, event.value).state is _M.DONE:
                await cancel_all([cluster.tasks.pop("n1")])  # its VMs live on
                stopped.set()
                return

    watcher = asyncio.create_task(stop_source_at_the_flip())
    try:
        await cluster.wait_for(stopped.is_set, 20, "the source agent stopped at the flip")
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    flipped = await record(cluster, rec.id)
    assert flipped.transfer_downtime_ms is None  # the old agent never wrote QEMU's measures
    probe = SimDriver(run_dir=cluster.tmp / "n1" / "sim")
    attached = await probe.attach()
    try:
        assert [(i.name, i.state) for i in attached] == [("web", VMState.PAUSED)]
    except AssertionError:
        for info in attached:  # no agent is left to stop them
            await probe.kill(info.name)
        raise
    finally:
        await probe.close()

    await start_with_run_dir(cluster, "n1")  # the restarted agent (stopped with the cluster)

    async def completed() -> Migration | None:
        got = await record(cluster, rec.id)
        return got if got.reason else None

    done: Migration = await cluster.wait_for(completed, 15, "the record completed")
    assert done.state is _M.DONE and done.reason.startswith(TIMES_LOST)
    assert "source agent on n1 restarted after the flip" in done.reason
    assert done.downtime_ms is None and done.transfer_downtime_ms is None
    assert done.resumed_at and done.total_ms == pytest.approx(
        (done.resumed_at - done.created) * 1000
    )
    said = [e.reason for e in await cluster.event_list("migration.done", "vm/web")]
    assert any("downtime unknown" in r and f"total {done.total_ms:.0f} ms" in r for r in said)

    async def discarded() -> bool:
        return all(i.name != "web" for i in await cluster.drivers["n1"].list())

    await cluster.wait_for(discarded, 10, "the paused copy on n1 discarded")
    assert await cluster.running_on("web") == "n2"


async def test_a_source_host_lost_after_its_flip_has_its_record_completed_by_the_controller(
    cluster: SimCluster,
) -> None:
    await cluster.start("n1", "n2")
    await cluster.create_vm("web", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("web") == "n1"
    rec = await move(cluster, "web", "n2")
    crashed = asyncio.Event()

    async def crash_source_at_the_flip() -> None:
        start = await cluster.store.revision()
        async for event in cluster.store.watch(cluster.keys.migration(rec.id), start):
            if event.value and decode(Migration, event.key, event.value).state is _M.DONE:
                await cluster.crash("n1")
                crashed.set()
                return

    watcher = asyncio.create_task(crash_source_at_the_flip())
    try:
        await cluster.wait_for(crashed.is_set, 20, "the source host crashed at the flip")
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert (await record(cluster, rec.id)).transfer_downtime_ms is None

    async def completed() -> Migration | None:
        got = await record(cluster, rec.id)
        return got if got.reason else None

    done: Migration = await cluster.wait_for(completed, 30, "the controller to complete it")
    assert done.state is _M.DONE and done.reason.startswith(TIMES_LOST)
    assert "source node n1 went away after the flip" in done.reason
    assert done.downtime_ms is None and done.resumed_at
    assert done.total_ms == pytest.approx((done.resumed_at - done.created) * 1000)
    assert await cluster.running_on("web") == "n2"
