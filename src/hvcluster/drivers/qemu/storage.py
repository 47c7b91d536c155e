"""The qemu driver's storage migration: a disk moved to a new file while the guest runs, and
shared-nothing migration (disks and memory to a host that does not see the disks).

The QMP work is in :mod:`hvcluster.drivers.qemu.blockjobs`.
"""

from __future__ import annotations

import builtins
import contextlib
from pathlib import Path

from hvcluster.drivers.base import DiskMoveResult, IncomingDisks, MigrationResult
from hvcluster.drivers.diskpath import disk_path, incoming_paths
from hvcluster.drivers.errors import DiskMoveFailed, SpecError
from hvcluster.drivers.parts import DiskMove, Receive, Send
from hvcluster.drivers.qemu import blockjobs
from hvcluster.drivers.qemu.live import QemuLive
from hvcluster.drivers.qemu.supervision import QemuSupervisor
from hvcluster.models.errors import DriverError
from hvcluster.models.vm import Disk


class QemuDisks:
    """The qemu driver's storage migration (its :class:`~hvcluster.drivers.parts.DiskMover`);
    a shared-nothing migration's memory goes through its live migration part."""

    def __init__(self, vms: QemuSupervisor, live: QemuLive) -> None:
        self.vms, self.live = vms, live
        self.copying: set[str] = set()  # VMs copying their disks for a shared-nothing move
        self.copy_cancelled: set[str] = set()

    def address_host(self, disks_address: str) -> str:
        return blockjobs.nbd_server(disks_address)[0]

    async def cancel_copy(self, name: str) -> None:
        """Stop the disk copy of a shared-nothing migration of ``name``, if one runs; or
        the mirrors one left behind when its agent went away (never a reason to fail)."""
        if name in self.copying:
            self.copy_cancelled.add(name)
            return
        with contextlib.suppress(DriverError):
            await blockjobs.drop_copies(self.vms.qmp(self.vms.get(name)))

    def _path(self, disk: Disk, index: int) -> Path:
        return disk_path(disk, index, self.vms.settings.volumes)

    async def move(self, name: str, move: DiskMove) -> DiskMoveResult:
        vm, index, dest = self.vms.get(name), move.index, move.dest
        if not 0 <= index < len(vm.spec.disks):
            raise SpecError(f"vm {name} has no disk {index}", f"disks[{index}]")
        try:
            path = self._path(dest, index)
        except SpecError as e:
            raise DiskMoveFailed(f"vm {name} disk {index}: cannot move it: {e}") from e
        monitor = self.vms.qmp(vm)
        result = await blockjobs.move_disk(
            monitor, index, path, dest.format, move.on_progress, move.timeout_s, move.confirm
        )
        blockjobs.respec(vm, index, dest)
        return result

    async def finish_move(self, name: str, index: int, dest: Disk) -> str | None:
        vm = self.vms.get(name)
        old = await blockjobs.finish_move(self.vms.qmp(vm), index, self._path(dest, index))
        if old is not None:
            blockjobs.respec(vm, index, dest)
        return old

    async def sizes(self, name: str) -> builtins.list[int]:
        vm = self.vms.get(name)
        return await blockjobs.disk_sizes(self.vms.qmp(vm), len(vm.spec.disks))

    async def receive(self, incoming: Receive) -> IncomingDisks:
        spec, sizes = incoming.spec, incoming.sizes
        paths = incoming_paths(spec, sizes, self.vms.settings.volumes)
        made: list[Path] = []
        try:
            for disk, path, size in zip(spec.disks, paths, sizes, strict=True):
                await blockjobs.create_image(path, disk.format, size)
                made.append(path)
            address = await self.live.receive(incoming)
            try:
                vm = self.vms.get(spec.name)
                disks_address = await blockjobs.export_disks(
                    self.vms.qmp(vm), len(paths), incoming.host
                )
                vm.exports = True
            except DriverError:
                await self.vms.discard(spec.name)
                raise
        except DriverError:
            for path in made:
                blockjobs.remove(path)
            raise
        return IncomingDisks(
            address=address, disks_address=disks_address, paths=tuple(map(str, paths))
        )

    async def send(self, name: str, send: Send) -> MigrationResult:
        vm = self.vms.get(name)

        async def memory() -> MigrationResult:
            return await self.live.send(name, send)

        count, timeout = len(vm.spec.disks), send.settings.timeout_s
        self.copying.add(name)
        try:
            return await blockjobs.with_mirrors(
                self.vms.qmp(vm),
                count,
                send.disks_address,
                timeout,
                send.on_progress,
                memory,
                lambda: name in self.copy_cancelled,
            )
        except DiskMoveFailed:
            await self.vms.after_failed_migration(vm)  # the copy failed: it runs on here
            raise
        finally:
            self.copying.discard(name)
            self.copy_cancelled.discard(name)
