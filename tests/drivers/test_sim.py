"""The sim driver's own promises: deterministic for a seed on a manual clock, a resource model
that behaves like a VM, and failures that can be injected."""

from __future__ import annotations

import asyncio

import pytest

from hvcluster.clock import ManualClock
from hvcluster.drivers.errors import MigrationCancelled, MigrationFailed
from hvcluster.drivers.sim import SimDriver, SimParams
from hvcluster.drivers.sim.model import migration_plan
from hvcluster.models.config import MigrationSettings
from hvcluster.models.lifecycle import VMState
from hvcluster.models.vm import VMSpec

pytestmark = pytest.mark.timeout(30)

CHAOS = SimParams(boot_s=4.0, crash_rate_per_hour=400.0, migration_failure_rate=0.5)


def vm(name: str, memory_mib: int = 512) -> VMSpec:
    return VMSpec(name=name, memory_mib=memory_mib)


async def run_until(clock: ManualClock, task: asyncio.Task[object], step: float = 0.05) -> None:
    while not task.done():
        await clock.advance(step)


async def scenario(seed: int) -> list[tuple[float, str, str, str]]:
    """Ten VMs on two hosts for ten simulated minutes: crashes, restarts, migrations."""
    clock = ManualClock(start=1_000_000.0)
    a = SimDriver(clock=clock, seed=seed, params=CHAOS)
    b = SimDriver(clock=clock, seed=seed, params=CHAOS)
    epochs = {f"vm-{i}": 1 for i in range(10)}
    for name in epochs:
        await a.start(vm(name), 1)
    for _ in range(60):
        await clock.advance(10.0)
        for info in await a.list() + await b.list():
            if info.state is VMState.FAILED:  # restart it locally, as an agent would
                driver = a if info in await a.list() else b
                epochs[info.name] += 1
                await driver.start(vm(info.name), epochs[info.name])
        running = [i.name for i in await a.list() if i.state is VMState.RUNNING]
        if running:
            name = running[0]
            epochs[name] += 1
            address = await b.prepare_incoming(vm(name), epochs[name], "127.0.0.1")
            move = asyncio.ensure_future(a.migrate_out(name, address, MigrationSettings()))
            await run_until(clock, move)
            if move.exception() is None:
                await b.resume(name)
                await a.discard(name)
            else:
                await b.discard(name)
    trace = a.trace + [(t, f"b:{n}", s, r) for t, n, s, r in b.trace]
    await a.close()
    await b.close()
    return trace


async def test_same_seed_same_trace() -> None:
    first, second = await scenario(7), await scenario(7)
    assert first == second
    states = {s for _, _, s, _ in first}
    assert {"running", "failed", "migrating", "paused"} <= states, states
    assert await scenario(8) != first


async def test_crash_at_a_chosen_time_is_reported_then() -> None:
    clock = ManualClock(start=1_000_000.0)
    d = SimDriver(clock=clock)
    await d.start(vm("a"), 1)
    d.inject_crash("a", at=clock.now() + 30)
    await clock.advance(29)
    assert (await d.status("a")).state is VMState.RUNNING
    await clock.advance(1)
    status = await d.status("a")
    assert (status.state, status.since) == (VMState.FAILED, clock.now())
    await d.close()


async def test_resource_use_follows_boot_then_load() -> None:
    clock = ManualClock(start=1_000_000.0)
    d = SimDriver(clock=clock, params=SimParams(boot_s=10, boot_jitter=0))
    await d.start(VMSpec(name="a", vcpus=2, memory_mib=1000), 1)
    booting = await d.usage("a")
    await clock.advance(60)
    booted = await d.usage("a")
    assert booting.cpu_percent > booted.cpu_percent
    assert booting.memory_mib < booted.memory_mib <= 1000
    await d.pause("a")
    assert (await d.usage("a")).cpu_percent == 0
    await d.close()


def test_migration_time_grows_with_memory_and_dirty_rate() -> None:
    quiet = SimParams(dirty_mib_s=0)
    busy = SimParams(dirty_mib_s=500)
    small, _ = migration_plan(quiet, 1024, 1000, 300)
    large, _ = migration_plan(quiet, 8192, 1000, 300)
    dirty, downtime = migration_plan(busy, 8192, 1000, 300)
    assert sum(p.seconds for p in small) < sum(p.seconds for p in large)
    assert len(dirty) > len(large) and sum(p.seconds for p in dirty) > sum(p.seconds for p in large)
    assert downtime <= 300 + 2
    never, _ = migration_plan(SimParams(dirty_mib_s=5000), 8192, 1000, 300)
    assert len(never) == SimParams().max_passes  # it does not converge: stopped at max passes


async def test_injected_migration_failure_and_cancel_keep_the_source() -> None:
    clock = ManualClock(start=1_000_000.0)
    a, b = SimDriver(clock=clock), SimDriver(clock=clock)
    await a.start(vm("m", memory_mib=4096), 1)
    a.fail_next_migration("m", "link flapped")
    address = await b.prepare_incoming(vm("m", memory_mib=4096), 2, "127.0.0.1")
    move = asyncio.ensure_future(a.migrate_out("m", address, MigrationSettings()))
    await run_until(clock, move)
    with pytest.raises(MigrationFailed, match="link flapped"):
        move.result()
    assert (await a.status("m")).state is VMState.RUNNING
    for _ in range(20):
        await clock.advance(0.05)
    assert (await b.status("m")).state is VMState.FAILED  # the target's stream broke

    slow = MigrationSettings(max_bandwidth_mib_s=100)  # 4 GiB at 100 MiB/s: 40 s
    address = await b.prepare_incoming(vm("m", memory_mib=4096), 3, "127.0.0.1")
    move = asyncio.ensure_future(a.migrate_out("m", address, slow))
    await clock.advance(5)
    assert (await a.status("m")).state is VMState.MIGRATING
    await a.cancel_migration("m")
    await run_until(clock, move)
    with pytest.raises(MigrationCancelled):
        move.result()
    assert (await a.status("m")).state is VMState.RUNNING
    await a.close()
    await b.close()
