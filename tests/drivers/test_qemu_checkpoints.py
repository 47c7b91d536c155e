"""Checkpoints of a real test guest (TCG): created with its memory while it runs, reverted
(the guest's counter goes back and runs on), refused where QEMU cannot, removed; created and
reverted while it is paused (it stays paused); and, once
the VM is off, a disk-only checkpoint through qemu-img. One guest boot."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hvcluster.drivers.errors import CheckpointFailed
from hvcluster.drivers.qemu.driver import QemuDriver
from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.drivers.runtime import vm_dir
from hvcluster.guestimage.image import GuestImage
from hvcluster.guestimage.testguest import create_disk, guest_spec, heartbeats, read_counter
from hvcluster.models.checkpoint import CheckpointAction
from hvcluster.models.lifecycle import VMState
from tests.waiting import wait_for

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(180)]
_A = CheckpointAction
BOOT_S = 60.0


async def test_checkpoint_revert_and_remove_on_a_running_guest(
    run_dirs: Callable[[str], Path], qemu_settings: QemuSettings, guest_image: GuestImage
) -> None:
    node = run_dirs("n1")
    disk = create_disk(node / "vm.qcow2")
    spec = guest_spec("cp", guest_image, disk)
    driver = QemuDriver(node, qemu_settings)
    try:
        await driver.start(spec, epoch=1)
        log = vm_dir(node, "cp") / "serial.log"
        await wait_for(lambda: bool(heartbeats(log)), BOOT_S, "first heartbeat")
        await wait_for(lambda: read_counter(disk) > 5, 30, "the counter running")

        [cp] = await driver.checkpoint(spec, _A.CREATE, "one")
        at = read_counter(disk)
        assert (await driver.status("cp")).state is VMState.RUNNING, "paused only meanwhile"
        assert (cp.name, cp.memory) == ("one", True) and cp.size > 0 and cp.created > 0
        with pytest.raises(CheckpointFailed, match="has a checkpoint 'one' already"):
            await driver.checkpoint(spec, _A.CREATE, "one")
        await wait_for(lambda: read_counter(disk) > at + 15, 30, "the counter past the checkpoint")
        before = read_counter(disk)
        await driver.checkpoint(spec, _A.REVERT, "one")
        back = read_counter(disk)
        assert (await driver.status("cp")).state is VMState.RUNNING
        assert back < before, f"the counter went back to about {at}: {back} (was {before})"
        await wait_for(lambda: read_counter(disk) > back + 5, 30, "the guest running on")
        assert [c.name for c in await driver.checkpoints(spec)] == ["one"]
        with pytest.raises(CheckpointFailed, match="no checkpoint 'two'"):
            await driver.checkpoint(spec, _A.REVERT, "two")

        # a paused VM: its checkpoint has its memory too, and it stays paused through the
        # create and a revert (QEMU resumes only a guest that ran), running on when resumed
        await driver.pause("cp")
        listed = await driver.checkpoint(spec, _A.CREATE, "held")
        assert [(c.name, c.memory) for c in listed] == [("one", True), ("held", True)]
        assert (await driver.status("cp")).state is VMState.PAUSED
        await driver.checkpoint(spec, _A.REVERT, "held")
        assert (await driver.status("cp")).state is VMState.PAUSED
        held = read_counter(disk)
        await driver.resume("cp")
        await wait_for(lambda: read_counter(disk) > held + 3, 30, "the resumed guest running on")
        assert await driver.checkpoint(spec, _A.DELETE, "held") == listed[:1]

        assert await driver.checkpoint(spec, _A.DELETE, "one") == []
        await driver.kill("cp")
        [cold] = await driver.checkpoint(spec, _A.CREATE, "cold")  # qemu-img, the VM off
        assert (cold.name, cold.memory) == ("cold", False)
        assert [c.name for c in await driver.checkpoints(spec)] == ["cold"]
    finally:
        await driver.close()
