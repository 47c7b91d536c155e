"""The qemu driver with real test guests under TCG: boot, counter, stop, re-attach, migration,
save/restore. Each test boots at most one guest (about 8 s of TCG on these machines)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hvcluster.drivers.qemu.driver import QemuDriver
from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.drivers.runtime import pid_alive, vm_dir
from hvcluster.guestimage.image import GuestImage
from hvcluster.guestimage.testguest import booted, create_disk, guest_spec, heartbeats, read_counter
from hvcluster.models.checkpoint import CheckpointAction
from hvcluster.models.config import MigrationSettings
from hvcluster.models.lifecycle import VMState
from hvcluster.models.migration import Progress
from tests.waiting import wait_for

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(120)]

BOOT_S = 60.0  # generous: two cores shared with other test suites


def serial(run_dir: Path, name: str) -> Path:
    return vm_dir(run_dir, name) / "serial.log"


async def counter_rises(disk: Path, above: int) -> None:
    await wait_for(lambda: read_counter(disk) > above, 15, f"counter on {disk} above {above}")


async def test_boot_counter_reattach_and_graceful_stop(
    run_dirs: Callable[[str], Path], qemu_settings: QemuSettings, guest_image: GuestImage
) -> None:
    node = run_dirs("n1")
    disk = create_disk(node / "vm.qcow2")
    driver = QemuDriver(node, qemu_settings)
    info = await driver.start(guest_spec("g1", guest_image, disk), epoch=7)
    assert info.state is VMState.RUNNING and info.epoch == 7 and info.pid
    await wait_for(lambda: bool(heartbeats(serial(node, "g1"))), BOOT_S, "first heartbeat")
    first = read_counter(disk)
    await counter_rises(disk, first)

    # The agent goes away; its VMs do not. A new driver instance takes them over.
    await driver.close()
    assert pid_alive(info.pid)
    again = QemuDriver(node, qemu_settings)
    attached = await again.attach()
    assert [(a.name, a.pid, a.epoch, a.state) for a in attached] == [
        ("g1", info.pid, 7, VMState.RUNNING)
    ]
    seen = read_counter(disk)
    await counter_rises(disk, seen)
    assert (await again.pause("g1")).state is VMState.PAUSED
    assert (await again.resume("g1")).state is VMState.RUNNING

    stopped = await again.shutdown("g1", timeout=30)
    assert stopped.state is VMState.STOPPED
    log = (node / "logs" / "g1.serial.log").read_text()
    assert "HVC-POWEROFF" in log, "the guest must have powered off by itself (ACPI)"
    assert not vm_dir(node, "g1").exists()
    assert log.count("HVC-BOOT") == 1
    await again.close()


async def test_live_migration_then_save_restore_keep_the_counter(
    run_dirs: Callable[[str], Path],
    qemu_settings: QemuSettings,
    guest_image: GuestImage,
    tmp_path: Path,
) -> None:
    n1, n2 = run_dirs("n1"), run_dirs("n2")
    disk = create_disk(tmp_path / "shared.qcow2")
    spec = guest_spec("mig", guest_image, disk)
    src, dst = QemuDriver(n1, qemu_settings), QemuDriver(n2, qemu_settings)
    await src.start(spec, epoch=1)
    await wait_for(lambda: bool(heartbeats(serial(n1, "mig"))), BOOT_S, "first heartbeat")
    await counter_rises(disk, 3)

    address = await dst.prepare_incoming(spec, 2, "127.0.0.1", MigrationSettings())
    assert address.startswith("tcp:127.0.0.1:")
    assert (await dst.status("mig")).state is VMState.MIGRATING
    seen: list[Progress] = []
    result = await src.migrate_out("mig", address, MigrationSettings(), seen.append)
    assert result.total_ms > 0 and result.downtime_ms > 0
    assert seen and seen[-1].bytes_transferred > 0
    assert (await src.status("mig")).state is VMState.PAUSED

    async def target_paused() -> bool:
        # The target hears "completed" from its own QEMU, a moment after the source does.
        return (await dst.status("mig")).state is VMState.PAUSED  # waits for the flip

    await wait_for(target_paused, 5, "the target to hold the VM paused")
    before = read_counter(disk)
    assert (await dst.resume("mig")).state is VMState.RUNNING
    await src.discard("mig")
    assert not vm_dir(n1, "mig").exists()
    await counter_rises(disk, before)
    assert read_counter(disk) >= before
    beats = heartbeats(serial(n2, "mig"))
    assert not booted(serial(n2, "mig")), "the target must continue the guest, not boot it"
    await wait_for(lambda: bool(heartbeats(serial(n2, "mig"))), 10, "heartbeat on target")
    beats = heartbeats(serial(n2, "mig"))
    assert beats[0] > before - 5  # it carried on counting where the source was

    # Quick migration back: save on n2, restore on n1, with a checkpoint taken before: it is
    # in the disk file, so it moves with the disk and reverts on the other host.
    [cp] = await dst.checkpoint(spec, CheckpointAction.CREATE, "before-quick")
    at_checkpoint = read_counter(disk)
    state = tmp_path / "mig.state"
    saved = await dst.save("mig", state)
    assert state.stat().st_size > 0 and saved.total_ms >= 0
    at_save = read_counter(disk)
    await dst.discard("mig")
    restored = await src.restore(spec, 3, state)
    assert restored.state is VMState.RUNNING and restored.epoch == 3
    await counter_rises(disk, at_save)
    assert not booted(serial(n1, "mig"))
    assert await src.checkpoints(spec) == [cp]
    await counter_rises(disk, at_checkpoint + 3)
    ahead = read_counter(disk)
    await src.checkpoint(spec, CheckpointAction.REVERT, "before-quick")
    assert read_counter(disk) < ahead  # back to about at_checkpoint, and on from there
    await counter_rises(disk, read_counter(disk))
    await src.kill("mig")
    await src.close()
    await dst.close()
