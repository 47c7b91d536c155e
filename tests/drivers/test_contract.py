"""One contract, every driver: qemu (real QEMU processes, guests not waited for), sim with a
run dir (placeholder processes, as in the lab) and sim purely in memory."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from hvcluster.drivers.base import Driver, VMEvent
from hvcluster.drivers.errors import (
    AlreadyRunning,
    DiskMoveFailed,
    MigrationFailed,
    NotRunning,
    SpecError,
)
from hvcluster.drivers.qemu.driver import QemuDriver
from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.drivers.runtime import kill_all, pid_alive, running_pids, vm_dir
from hvcluster.drivers.sim import SimDriver, SimParams
from hvcluster.drivers.sim.state import SimHost
from hvcluster.guestimage.image import GuestImage
from hvcluster.guestimage.testguest import create_disk, guest_spec
from hvcluster.models.config import MigrationSettings
from hvcluster.models.lifecycle import VMState
from hvcluster.models.migration import Progress
from hvcluster.models.vm import Disk, Nic, VMSpec
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

KINDS = ["qemu", "sim", "sim-memory"]
FAST = SimParams(boot_s=0.5, shutdown_s=0.1)
Factory = Callable[[str], Driver]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "qemu":
        request.applymarker(pytest.mark.qemu)
    return str(request.param)


@pytest.fixture
async def make(
    kind: str,
    run_dirs: Callable[[str], Path],
    qemu_settings: QemuSettings,
) -> AsyncIterator[Factory]:
    """``make("n1")``: a driver for node n1 (two calls with one name: two instances, as
    after an agent restart). Every instance is closed and every VM killed after the test."""
    made: list[Driver] = []

    def factory(node: str) -> Driver:
        driver: Driver
        if kind == "qemu":
            driver = QemuDriver(run_dirs(node), qemu_settings)
        elif kind == "sim":
            driver = SimDriver(run_dirs(node), seed=1, params=FAST)
        else:
            driver = SimDriver(None, seed=1, params=FAST)
        made.append(driver)
        return driver

    yield factory
    for driver in made:
        for info in await driver.list():
            if info.state not in (VMState.STOPPED, VMState.FAILED):
                await driver.discard(info.name)
        await driver.close()


@pytest.fixture
def spec(guest_image: GuestImage) -> VMSpec:
    return guest_spec("c1", guest_image)


async def next_event(
    driver: Driver, match: Callable[[VMEvent], bool], timeout: float = 15
) -> VMEvent:
    async with asyncio.timeout(timeout):
        async for event in driver.events():
            if match(event):
                return event
    raise AssertionError("unreachable")


async def test_inventory(make: Factory, kind: str) -> None:
    facts = await make("n1").inventory()
    assert facts.capacity.cpus > 0 and facts.capacity.memory_mib > 0
    assert facts.inventory.driver == kind.removesuffix("-memory")
    if kind == "qemu":
        assert facts.inventory.accelerator == "tcg"  # forced by the test settings
        assert facts.inventory.qemu_version[0].isdigit()


async def test_start_status_list_kill(make: Factory, spec: VMSpec, kind: str) -> None:
    d = make("n1")
    info = await d.start(spec, epoch=4)
    assert (info.name, info.state, info.epoch) == ("c1", VMState.RUNNING, 4)
    assert info.since > 0
    if kind != "sim-memory":
        assert info.pid and pid_alive(info.pid)
    assert [i.name for i in await d.list()] == ["c1"]
    assert (await d.status("c1")).state is VMState.RUNNING
    with pytest.raises(AlreadyRunning):
        await d.start(spec, epoch=5)
    gone = await d.kill("c1")
    assert gone.state is VMState.STOPPED and gone.pid is None
    assert (await d.status("c1")).state is VMState.STOPPED
    if info.pid:
        assert not pid_alive(info.pid)
    with pytest.raises(NotRunning):
        await d.kill("c1")


async def test_unknown_vm(make: Factory) -> None:
    d = make("n1")
    with pytest.raises(NotRunning, match="nope"):
        await d.status("nope")
    with pytest.raises(NotRunning):
        await d.resume("nope")
    await d.discard("nope")  # never fails


async def test_paused_start_resume_pause(make: Factory, spec: VMSpec) -> None:
    d = make("n1")
    assert (await d.start(spec, 1, paused=True)).state is VMState.PAUSED
    assert (await d.resume("c1")).state is VMState.RUNNING
    assert (await d.pause("c1")).state is VMState.PAUSED
    assert (await d.status("c1")).state is VMState.PAUSED


async def test_shutdown_forces_a_guest_that_does_not_power_off(make: Factory, spec: VMSpec) -> None:
    d = make("n1")
    await d.start(spec, 1, paused=True)  # a paused guest cannot answer the power button
    stopped = await d.shutdown("c1", timeout=0.5)
    assert stopped.state is VMState.STOPPED
    assert "forced" in stopped.reason or "request" in stopped.reason


async def test_crash_is_reported_as_failed(make: Factory, spec: VMSpec, kind: str) -> None:
    d = make("n1")
    info = await d.start(spec, 2)
    if isinstance(d, SimDriver) and kind == "sim-memory":
        d.inject_crash("c1", reason="crashed (injected)")
    else:
        assert info.pid is not None
        os.kill(info.pid, signal.SIGKILL)
    event = await next_event(d, lambda e: e.state is VMState.FAILED)
    assert (event.name, event.epoch) == ("c1", 2)
    status = await d.status("c1")
    assert status.state is VMState.FAILED and status.reason
    assert [i.state for i in await d.list()] == [VMState.FAILED]
    if d.run_dir is not None:
        assert not vm_dir(d.run_dir, "c1").exists()
    # The same VM can start again here (a local restart).
    assert (await d.start(spec, 2)).state is VMState.RUNNING


async def test_new_instance_reattaches(make: Factory, spec: VMSpec, kind: str) -> None:
    if kind == "sim-memory":
        pytest.skip("an in-memory sim driver has nothing to re-attach from")
    first = make("n1")
    info = await first.start(spec, 3)
    await first.close()
    assert info.pid and pid_alive(info.pid)
    second = make("n1")
    attached = await second.attach()
    assert [(a.name, a.pid, a.epoch, a.state) for a in attached] == [
        ("c1", info.pid, 3, VMState.RUNNING)
    ]
    assert await second.attach() == []  # attaching twice takes nothing twice
    assert (await second.pause("c1")).state is VMState.PAUSED
    # A VM that died while nobody watched is reported failed and its dir cleaned.
    await second.close()
    os.kill(info.pid, signal.SIGKILL)
    await wait_for(lambda: not pid_alive(info.pid), 5, "the killed VM process gone")
    third = make("n1")
    assert await third.attach() == []
    assert (await third.status("c1")).state is VMState.FAILED
    assert third.run_dir is not None and not vm_dir(third.run_dir, "c1").exists()


async def test_watchdog_helpers_see_and_kill_vms(make: Factory, spec: VMSpec, kind: str) -> None:
    if kind == "sim-memory":
        pytest.skip("an in-memory sim VM has no process")
    d = make("n1")
    info = await d.start(spec, 1)
    assert d.run_dir is not None and running_pids(d.run_dir) == [info.pid]
    assert kill_all(d.run_dir) == [info.pid]
    await next_event(d, lambda e: e.state is VMState.FAILED)
    assert running_pids(d.run_dir) == []


async def test_bad_specs_are_refused_naming_the_field(
    make: Factory, spec: VMSpec, tmp_path: Path
) -> None:
    d = make("n1")
    facts = await d.inventory()
    too_big = spec.model_copy(update={"memory_mib": facts.capacity.memory_mib + 1024})
    with pytest.raises(SpecError, match="memory_mib") as e:
        await d.start(too_big, 1)
    assert e.value.field == "memory_mib"
    missing = spec.model_copy(update={"disks": (Disk(path=str(tmp_path / "none.qcow2")),)})
    with pytest.raises(SpecError, match=r"disks\[0\]\.path.*does not exist"):
        await d.start(missing, 1)
    nic = Nic(switch="hvc-nosuchbr", mac="52:54:00:00:00:01")
    with pytest.raises(SpecError, match=r"nics\[0\]\.switch.*hvc-nosuchbr"):
        await d.start(spec.model_copy(update={"nics": (nic,)}), 1)
    assert await d.list() == []


async def test_live_migration_primitives(make: Factory, spec: VMSpec) -> None:
    src, dst = make("n1"), make("n2")
    await src.start(spec, 1)
    address = await dst.prepare_incoming(spec, 2, "127.0.0.1", MigrationSettings())
    assert (await dst.status("c1")).state is VMState.MIGRATING
    passes: list[int] = []
    result = await src.migrate_out(
        "c1", address, MigrationSettings(), lambda p: passes.append(p.passes)
    )
    assert result.total_ms > 0 and result.downtime_ms >= 0
    assert passes and passes == sorted(passes)
    assert (await src.status("c1")).state is VMState.PAUSED

    async def paused() -> bool:  # the target learns of completion from the stream
        return (await dst.status("c1")).state is VMState.PAUSED

    await wait_for(paused, 5, "the target paused")
    resumed = await dst.resume("c1")
    assert (resumed.state, resumed.epoch) == (VMState.RUNNING, 2)
    await src.discard("c1")
    assert [i.name for i in await src.list()] == []


async def test_running_spec_and_a_state_of_another_size(make: Factory, spec: VMSpec) -> None:
    """What a VM runs with is the spec it was started with (an edit of the stored spec
    waits for its next cold start); a target prepared with another memory size refuses the
    state, and the source runs on."""
    src, dst = make("n1"), make("n2")
    await src.start(spec, 1)
    running = await src.running_spec("c1")
    assert (running.memory_mib, running.vcpus, running.boot) == (
        spec.memory_mib,
        spec.vcpus,
        spec.boot,
    )
    with pytest.raises(NotRunning):
        await dst.running_spec("c1")
    bigger = spec.model_copy(update={"memory_mib": spec.memory_mib * 2})
    address = await dst.prepare_incoming(bigger, 2, "127.0.0.1", MigrationSettings())
    with pytest.raises(MigrationFailed):
        await src.migrate_out("c1", address, MigrationSettings(timeout_s=20))
    assert (await src.status("c1")).state is VMState.RUNNING
    assert (await src.running_spec("c1")).memory_mib == spec.memory_mib


async def test_failed_migration_leaves_the_source_running(make: Factory, spec: VMSpec) -> None:
    src, dst = make("n1"), make("n2")
    await src.start(spec, 1)
    address = await dst.prepare_incoming(spec, 2, "127.0.0.1")
    await dst.discard("c1")  # the target host goes away before the transfer
    with pytest.raises(MigrationFailed):
        await src.migrate_out("c1", address, MigrationSettings(timeout_s=20))
    assert (await src.status("c1")).state is VMState.RUNNING


async def test_save_and_restore(make: Factory, spec: VMSpec, tmp_path: Path) -> None:
    src, dst = make("n1"), make("n2")
    await src.start(spec, 1)
    state = tmp_path / "c1.state"
    await src.save("c1", state)
    assert state.stat().st_size > 0
    assert (await src.status("c1")).state is VMState.PAUSED
    await src.discard("c1")
    restored = await dst.restore(spec, 2, state)
    assert (restored.state, restored.epoch) == (VMState.RUNNING, 2)
    with pytest.raises(SpecError, match="does not exist"):
        await src.restore(spec, 3, tmp_path / "missing.state")


def test_sim_host_is_configurable() -> None:
    host = SimHost(cpus=4, memory_mib=2048, switches=("br0",))
    assert SimDriver(host=host).host.switches == ("br0",)


async def test_move_disk_switches_the_vm_to_the_new_file(
    make: Factory, spec: VMSpec, tmp_path: Path
) -> None:
    d = make("n1")
    (tmp_path / "a").mkdir()
    old = create_disk(tmp_path / "a" / "c1.qcow2")
    d.set_volumes({"b": tmp_path / "b"})
    await d.start(spec.model_copy(update={"disks": (Disk(path=str(old)),)}), 1)

    async def no() -> bool:
        return False

    with pytest.raises(DiskMoveFailed, match=r"vm c1 disk 0: .*not confirmed"):
        await d.move_disk("c1", 0, Disk(path="c1.qcow2", volume="b"), confirm=no)
    assert not (tmp_path / "b" / "c1.qcow2").exists(), "an unconfirmed copy is removed"
    seen: list[Progress] = []
    asked: list[bool] = []

    async def yes() -> bool:
        asked.append(True)
        return True

    new = Disk(path="c1.qcow2", volume="b")
    moved = await d.move_disk("c1", 0, new, seen.append, confirm=yes)
    assert asked == [True]
    assert (moved.old_path, moved.new_path) == (str(old), str(tmp_path / "b" / "c1.qcow2"))
    assert moved.bytes_total > 0 and seen and seen[-1].bytes_transferred == seen[-1].bytes_total
    assert (tmp_path / "b" / "c1.qcow2").is_file() and old.is_file()  # the old one is left
    assert (await d.status("c1")).state is VMState.RUNNING
    with pytest.raises(DiskMoveFailed, match=r"vm c1 disk 0: .*exists already"):
        await d.move_disk("c1", 0, Disk(path=str(old)))
    with pytest.raises(DiskMoveFailed, match=r"volume 'nope' is not mounted"):
        await d.move_disk("c1", 0, Disk(path="x.qcow2", volume="nope"))
    with pytest.raises(NotRunning):
        await d.move_disk("c9", 0, Disk(path=str(tmp_path / "c9.qcow2")))
    assert (await d.status("c1")).state is VMState.RUNNING


async def test_shared_nothing_primitives(make: Factory, spec: VMSpec, tmp_path: Path) -> None:
    src, dst = make("n1"), make("n2")
    (tmp_path / "n1").mkdir(exist_ok=True)
    disk = create_disk(tmp_path / "n1" / "c1.qcow2")
    on_src = spec.model_copy(update={"disks": (Disk(path=str(disk)),)})
    there = tmp_path / "n2-disks" / "c1.qcow2"
    on_dst = spec.model_copy(update={"disks": (Disk(path=str(there)),)})
    await src.start(on_src, 1)
    sizes = await src.disk_sizes("c1")
    assert len(sizes) == 1 and sizes[0] > 0
    incoming = await dst.prepare_incoming_with_disks(on_dst, 2, "127.0.0.1", sizes)
    assert incoming.paths == (str(there),) and there.is_file()
    assert src.disks_host(incoming.disks_address) == "127.0.0.1"  # what the agent checks
    with pytest.raises(SpecError, match="disks_address"):
        src.disks_host("tcp:127.0.0.1:1")
    with pytest.raises(SpecError, match="exists"):  # its disk file is there now
        await make("n3").prepare_incoming_with_disks(on_dst, 2, "127.0.0.1", sizes)
    result = await src.migrate_out(
        "c1", incoming.address, MigrationSettings(), disks_address=incoming.disks_address
    )
    assert result.total_ms > 0
    assert (await src.status("c1")).state is VMState.PAUSED

    async def paused() -> bool:  # the target learns of completion from the stream
        return (await dst.status("c1")).state is VMState.PAUSED

    await wait_for(paused, 5, "the target paused")
    resumed = await dst.resume("c1")
    assert (resumed.state, resumed.epoch) == (VMState.RUNNING, 2)
    await src.discard("c1")
