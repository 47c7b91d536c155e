"""The qemu driver's fast switch of a live migration, with a real test guest: the source's
completion hook runs the moment QEMU says completed (before QEMU's measures are read), and a
target resumed while still loading its state runs the guest as soon as it is loaded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hvcluster.drivers.qemu.driver import QemuDriver
from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.drivers.runtime import vm_dir
from hvcluster.guestimage.image import GuestImage
from hvcluster.guestimage.testguest import booted, create_disk, guest_spec, heartbeats, read_counter
from hvcluster.models.config import MigrationSettings
from hvcluster.models.lifecycle import VMState
from tests.drivers.test_qemu_migration_load import stop_all
from tests.waiting import wait_for

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(120)]

BOOT_S = 60.0  # generous: two cores shared with other test suites


async def test_target_resumed_from_the_completion_hook_runs_the_guest_on(
    run_dirs: Callable[[str], Path],
    qemu_settings: QemuSettings,
    guest_image: GuestImage,
    tmp_path: Path,
) -> None:
    n1, n2 = run_dirs("n1"), run_dirs("n2")
    disk = create_disk(tmp_path / "shared.qcow2")
    spec = guest_spec("mig", guest_image, disk)
    src, dst = QemuDriver(n1, qemu_settings), QemuDriver(n2, qemu_settings)
    try:
        await src.start(spec, epoch=1)
        serial1 = vm_dir(n1, "mig") / "serial.log"
        await wait_for(lambda: bool(heartbeats(serial1)), BOOT_S, "first heartbeat")
        address = await dst.prepare_incoming(spec, 2, "127.0.0.1", MigrationSettings())
        seen: dict[str, object] = {}
        landed = asyncio.Event()  # the target's own MIGRATION "completed" event, handled

        def on_target_event(event: str, data: dict[str, Any]) -> None:
            if event == "MIGRATION" and data.get("status") == "completed":
                landed.set()  # (subscribers are called just before the driver's own handler)

        async def completed(at: float) -> None:
            seen["source"] = (await src.status("mig")).state
            seen["target before"] = (await dst.status("mig")).state
            seen["resumed"] = (await dst.resume("mig")).state  # returns once it runs
            seen["at"] = at

        with dst.vms.qmp(dst.vms.get("mig")).subscribe(on_target_event):
            result = await src.migrate_out("mig", address, MigrationSettings(), None, completed)
            print(f"target when the hook ran: {seen['target before']}")  # usually migrating
            assert seen["source"] is VMState.PAUSED
            assert seen["resumed"] is VMState.RUNNING
            assert result.completed_at == seen["at"] and result.downtime_ms > 0
            before = read_counter(disk)
            await src.discard("mig")
            # its own "completed" event may come after RESUME: once handled, still running
            await asyncio.wait_for(landed.wait(), 20)
        assert (await dst.status("mig")).state is VMState.RUNNING
        serial2 = vm_dir(n2, "mig") / "serial.log"
        await wait_for(lambda: bool(heartbeats(serial2)), 20, "heartbeat on the target")
        assert not booted(serial2), "the target must continue the guest, not boot it"
        await wait_for(lambda: read_counter(disk) > before, 20, "the counter going on")
    finally:
        await stop_all(src, dst)


async def test_a_target_asked_to_run_before_the_source_let_go_of_its_disk_waits_for_it(
    run_dirs: Callable[[str], Path],
    qemu_settings: QemuSettings,
    guest_image: GuestImage,
    tmp_path: Path,
) -> None:
    """QEMU 7.2's ``cont`` on an incoming target takes its disks' write locks at once; they are
    the source's until it switches (postcopy's start, or precopy's end). The source's
    postcopy-active is heard before the target knows of postcopy, so the target must wait for
    the locks whatever the kind of migration (a CI run failed here). The source is a paused,
    never-booted QEMU: nothing to wait for but the disk lock."""
    n1, n2 = run_dirs("n1"), run_dirs("n2")
    spec = guest_spec("early", guest_image, create_disk(tmp_path / "shared.qcow2"))
    src, dst = QemuDriver(n1, qemu_settings), QemuDriver(n2, qemu_settings)
    try:
        await src.start(spec, epoch=1, paused=True)
        address = await dst.prepare_incoming(spec, 2, "127.0.0.1", MigrationSettings())
        early = asyncio.create_task(dst.resume("early"))  # the source still holds the disk
        await asyncio.sleep(0.3)
        assert not early.done(), early  # refused by the lock, and asking again
        await src.migrate_out("early", address, MigrationSettings(), None, None)
        assert (await asyncio.wait_for(early, 30)).state is VMState.RUNNING
        assert (await dst.status("early")).state is VMState.RUNNING
    finally:
        await stop_all(src, dst)
