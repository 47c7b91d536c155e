"""Storage migration with real test guests under TCG: a disk moved to another file while the
guest writes its counter, and shared-nothing migration between two drivers with separate run
dirs and disk dirs. Each test boots one guest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hvcluster.drivers.errors import DiskMoveFailed
from hvcluster.drivers.qemu.driver import QemuDriver
from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.drivers.runtime import read_json, vm_dir
from hvcluster.guestimage.image import GuestImage
from hvcluster.guestimage.testguest import booted, create_disk, guest_spec, heartbeats, read_counter
from hvcluster.models.config import MigrationSettings
from hvcluster.models.lifecycle import VMState
from hvcluster.models.migration import Progress
from hvcluster.models.vm import Disk
from tests.waiting import wait_for

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(120)]

BOOT_S = 60.0


def serial(run_dir: Path, name: str) -> Path:
    return vm_dir(run_dir, name) / "serial.log"


async def counter_rises(disk: Path, above: int) -> None:
    await wait_for(lambda: read_counter(disk) > above, 15, f"counter on {disk} above {above}")


async def test_move_disk_keeps_the_counter_and_runs_from_the_new_file(
    run_dirs: Callable[[str], Path],
    qemu_settings: QemuSettings,
    guest_image: GuestImage,
    tmp_path: Path,
) -> None:
    node = run_dirs("n1")
    (tmp_path / "vol-a").mkdir()
    (tmp_path / "vol-b").mkdir()
    old = create_disk(tmp_path / "vol-a" / "g.qcow2", size_mib=32)
    settings = qemu_settings.model_copy(
        update={"volumes": {"b": tmp_path / "vol-b", "a": tmp_path / "vol-a"}}
    )
    driver = QemuDriver(node, settings)
    spec = guest_spec("mv", guest_image, old)
    try:
        await driver.start(spec, epoch=1)
        await wait_for(lambda: bool(heartbeats(serial(node, "mv"))), BOOT_S, "first heartbeat")
        await counter_rises(old, 2)

        # Refusals leave the guest on its disk: a file already there, an unknown volume.
        taken = create_disk(tmp_path / "vol-b" / "taken.qcow2")
        with pytest.raises(DiskMoveFailed, match=r"vm mv disk 0.*exists already"):
            await driver.move_disk("mv", 0, Disk(path="taken.qcow2", volume="b"))
        with pytest.raises(DiskMoveFailed, match=r"volume 'c' is not mounted"):
            await driver.move_disk("mv", 0, Disk(path="x.qcow2", volume="c"))
        assert taken.exists()

        seen: list[Progress] = []
        dest = Disk(path="moved/g.qcow2", volume="b")
        result = await driver.move_disk("mv", 0, dest, seen.append)
        new = tmp_path / "vol-b" / "moved" / "g.qcow2"
        assert result.old_path == str(old) and result.new_path == str(new)
        assert result.bytes_total == 32 * 1024 * 1024
        assert seen and seen[-1].bytes_transferred == seen[-1].bytes_total > 0
        at_switch = read_counter(new)
        assert at_switch >= read_counter(old) > 0  # the copy carries on from the old value

        # The guest writes to the new file only; the old one can go while it counts on.
        frozen = read_counter(old)
        old.unlink()
        await counter_rises(new, at_switch + 3)
        assert not old.exists() and frozen <= at_switch
        assert (await driver.status("mv")).state is VMState.RUNNING
        assert booted(serial(node, "mv")) and heartbeats(serial(node, "mv"))
        log = serial(node, "mv").read_text()
        assert log.count("HVC-BOOT") == 1, "the guest was never reset"
        record = read_json(vm_dir(node, "mv") / "spec.json")
        assert record is not None and record["spec"]["disks"][0]["path"] == "moved/g.qcow2"

        # A re-attached driver knows the new disk (a second move starts from it).
        await driver.close()
        driver = QemuDriver(node, settings)
        await driver.attach()
        back = await driver.move_disk("mv", 0, Disk(path="back.qcow2", volume="a"))
        assert back.old_path == str(new)
        await counter_rises(tmp_path / "vol-a" / "back.qcow2", read_counter(new))

        # A move confirmed (the spec names the new file) whose mover went away before the
        # switch: the next agent finishes it.
        monitor = driver.vms.running["mv"].monitor
        assert monitor is not None
        confirmed = create_disk(tmp_path / "vol-b" / "confirmed.qcow2", size_mib=32)
        target = {"driver": "file", "filename": str(confirmed)}
        await monitor.execute(
            "blockdev-add", {"driver": "qcow2", "node-name": "hvc-move0-c", "file": target}
        )
        await monitor.execute(
            "blockdev-mirror",
            {
                "job-id": "hvc-mirror0-c",
                "device": "disk0",
                "target": "hvc-move0-c",
                "sync": "full",
                "copy-mode": "write-blocking",
                "auto-dismiss": False,
            },
        )

        async def ready() -> bool:
            jobs = await monitor.execute("query-jobs")
            return bool(jobs) and jobs[0]["status"] == "ready"

        await wait_for(ready, 30, "the confirmed mirror ready")
        dest = Disk(path="confirmed.qcow2", volume="b")
        assert await driver.finish_disk_move("mv", 0, Disk(path="x.qcow2", volume="b")) is None
        assert await driver.finish_disk_move("mv", 0, dest) == str(
            tmp_path / "vol-a" / "back.qcow2"
        )
        assert await driver.finish_disk_move("mv", 0, dest) is None  # nothing left to finish
        await counter_rises(confirmed, read_counter(confirmed))

        # A mirror left running by a mover that went away is stopped by the next move.
        stale = create_disk(tmp_path / "vol-b" / "stale.qcow2", size_mib=32)
        target = {"driver": "file", "filename": str(stale)}
        await monitor.execute(
            "blockdev-add", {"driver": "qcow2", "node-name": "hvc-move0-old", "file": target}
        )
        await monitor.execute(
            "blockdev-mirror",
            {
                "job-id": "hvc-mirror0-old",
                "device": "disk0",
                "target": "hvc-move0-old",
                "sync": "full",
                "auto-dismiss": False,
            },
        )
        again = await driver.move_disk("mv", 0, Disk(path="again.qcow2", volume="b"))
        assert again.old_path == str(confirmed)
        assert await monitor.execute("query-jobs") == []
        await counter_rises(tmp_path / "vol-b" / "again.qcow2", read_counter(stale))
    finally:
        await driver.close()


async def test_shared_nothing_migration_continues_from_the_targets_own_copy(
    run_dirs: Callable[[str], Path],
    qemu_settings: QemuSettings,
    guest_image: GuestImage,
    tmp_path: Path,
) -> None:
    n1, n2 = run_dirs("n1"), run_dirs("n2")
    disks1, disks2 = tmp_path / "disks-n1", tmp_path / "disks-n2"
    disks1.mkdir()
    disks2.mkdir()
    src_disk = create_disk(disks1 / "g.qcow2", size_mib=32)
    src = QemuDriver(n1, qemu_settings)
    dst = QemuDriver(n2, qemu_settings)
    spec = guest_spec("sn", guest_image, src_disk)
    there = disks2 / "g.qcow2"
    target_spec = spec.model_copy(update={"disks": (Disk(path=str(there)),)})
    try:
        await src.start(spec, epoch=1)
        await wait_for(lambda: bool(heartbeats(serial(n1, "sn"))), BOOT_S, "first heartbeat")
        await counter_rises(src_disk, 3)

        sizes = await src.disk_sizes("sn")
        assert sizes == [32 * 1024 * 1024]
        incoming = await dst.prepare_incoming_with_disks(
            target_spec, 2, "127.0.0.1", sizes, MigrationSettings()
        )
        assert incoming.disks_address.startswith("nbd:127.0.0.1:")
        assert incoming.paths == (str(there),) and there.exists()
        seen: list[Progress] = []
        result = await src.migrate_out(
            "sn",
            incoming.address,
            MigrationSettings(),
            seen.append,
            disks_address=incoming.disks_address,
        )
        assert result.total_ms > 0 and seen
        assert (await src.status("sn")).state is VMState.PAUSED

        async def target_paused() -> bool:
            return (await dst.status("sn")).state is VMState.PAUSED

        await wait_for(target_paused, 10, "the target to hold the VM paused")
        at_switch = read_counter(src_disk)
        assert read_counter(there) == at_switch > 3, "the target's copy is complete"
        await dst.resume("sn")
        await src.discard("sn")
        src_disk.unlink()  # the target does not need the source's disk
        await counter_rises(there, at_switch + 3)
        assert not booted(serial(n2, "sn")), "the target continues the guest, not boots it"
        await wait_for(lambda: bool(heartbeats(serial(n2, "sn"))), 10, "heartbeat on target")
        assert heartbeats(serial(n2, "sn"))[0] > at_switch - 5
    finally:
        await src.close()
        await dst.close()


async def test_shared_nothing_to_an_unreachable_export_keeps_the_vm_running(
    run_dirs: Callable[[str], Path],
    qemu_settings: QemuSettings,
    guest_image: GuestImage,
    tmp_path: Path,
) -> None:
    n1 = run_dirs("n1")
    disk = create_disk(tmp_path / "g.qcow2")
    src = QemuDriver(n1, qemu_settings)
    try:
        await src.start(guest_spec("un", guest_image, disk), epoch=1)
        # No need to wait for the boot: the copy fails at once (nobody serves that port).
        with pytest.raises(DiskMoveFailed, match=r"vm un: copying its disks to nbd:127.0.0.1:1"):
            await src.migrate_out(
                "un", "tcp:127.0.0.1:1", MigrationSettings(), disks_address="nbd:127.0.0.1:1"
            )
        assert (await src.status("un")).state is VMState.RUNNING

        # The mirrors of a shared-nothing migration whose agent went away are stopped by
        # the cancel the next agent sends (here to a file node named as an NBD one would be).
        monitor = src.vms.running["un"].monitor
        assert monitor is not None
        left = create_disk(tmp_path / "left.qcow2")
        target = {"driver": "file", "filename": str(left)}
        await monitor.execute(
            "blockdev-add", {"driver": "qcow2", "node-name": "hvc-nbd0-old", "file": target}
        )
        await monitor.execute(
            "blockdev-mirror",
            {
                "job-id": "hvc-copy0-old",
                "device": "disk0",
                "target": "hvc-nbd0-old",
                "sync": "full",
                "copy-mode": "write-blocking",
                "auto-dismiss": False,
            },
        )
        await src.cancel_migration("un")
        assert await monitor.execute("query-jobs") == []
        nodes = await monitor.execute("query-named-block-nodes", {"flat": True})
        assert not [n for n in nodes if n["node-name"].startswith("hvc-")]
        await wait_for(lambda: bool(heartbeats(serial(n1, "un"))), BOOT_S, "first heartbeat")
        await counter_rises(disk, read_counter(disk))
    finally:
        await src.close()
