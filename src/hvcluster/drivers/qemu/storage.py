"""The qemu driver's storage migration: a disk moved to a new file while the guest runs, and
shared-nothing migration (disks and memory to a host that does not see the disks).

:class:`StorageMigration` is the base of :class:`~hvcluster.drivers.qemu.driver.QemuDriver`
holding these contract methods; the QMP work is in :mod:`hvcluster.drivers.qemu.blockjobs`.
It relies on the few driver internals declared abstract below.
"""

from __future__ import annotations

import builtins
import contextlib
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path

from hvcluster.drivers.base import (
    CompletionHook,
    Confirm,
    DiskMoveResult,
    Driver,
    IncomingDisks,
    MigrationResult,
    ProgressCallback,
)
from hvcluster.drivers.diskpath import disk_path
from hvcluster.drivers.errors import DiskMoveFailed, SpecError
from hvcluster.drivers.qemu import blockjobs
from hvcluster.drivers.qemu.monitor import Monitor
from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.drivers.qemu.vm import QemuVM
from hvcluster.models.config import MigrationSettings
from hvcluster.models.errors import DriverError
from hvcluster.models.vm import Disk, VMSpec


class StorageMigration(Driver):
    settings: QemuSettings

    def __init__(self, run_dir: Path | None) -> None:
        super().__init__(run_dir)
        self._copying: set[str] = set()  # VMs copying their disks for a shared-nothing move
        self._copy_cancelled: set[str] = set()

    async def cancel_disk_copy(self, name: str) -> None:
        """Stop the disk copy of a shared-nothing migration of ``name``, if one runs; or
        the mirrors one left behind when its agent went away (never a reason to fail)."""
        if name in self._copying:
            self._copy_cancelled.add(name)
            return
        with contextlib.suppress(DriverError):
            await blockjobs.drop_copies(self._qmp(self._get(name)))

    @abstractmethod
    def _get(self, name: str) -> QemuVM: ...

    @abstractmethod
    def _qmp(self, vm: QemuVM) -> Monitor: ...

    @abstractmethod
    async def _after_failed_migration(self, vm: QemuVM, resume: bool = False) -> None: ...

    async def move_disk(
        self,
        name: str,
        index: int,
        dest: Disk,
        on_progress: ProgressCallback | None = None,
        timeout_s: float = 3600.0,
        confirm: Confirm | None = None,
    ) -> DiskMoveResult:
        vm = self._get(name)
        if not 0 <= index < len(vm.spec.disks):
            raise SpecError(f"vm {name} has no disk {index}", f"disks[{index}]")
        try:
            path = disk_path(dest, index, self.settings.volumes)
        except SpecError as e:
            raise DiskMoveFailed(f"vm {name} disk {index}: cannot move it: {e}") from e
        monitor = self._qmp(vm)
        result = await blockjobs.move_disk(
            monitor, index, path, dest.format, on_progress, timeout_s, confirm
        )
        blockjobs.respec(vm, index, dest)
        return result

    async def finish_disk_move(self, name: str, index: int, dest: Disk) -> str | None:
        vm = self._get(name)
        path = disk_path(dest, index, self.settings.volumes)
        old = await blockjobs.finish_move(self._qmp(vm), index, path)
        if old is not None:
            blockjobs.respec(vm, index, dest)
        return old

    async def disk_sizes(self, name: str) -> builtins.list[int]:
        vm = self._get(name)
        return await blockjobs.disk_sizes(self._qmp(vm), len(vm.spec.disks))

    async def prepare_incoming_with_disks(
        self,
        spec: VMSpec,
        epoch: int,
        host: str,
        sizes: Sequence[int],
        settings: MigrationSettings | None = None,
    ) -> IncomingDisks:
        paths = [disk_path(d, i, self.settings.volumes) for i, d in enumerate(spec.disks)]
        if len(sizes) != len(paths):
            raise SpecError(f"{len(sizes)} sizes for {len(paths)} disks", "disks")
        made: list[Path] = []
        try:
            for disk, path, size in zip(spec.disks, paths, sizes, strict=True):
                await blockjobs.create_image(path, disk.format, size)
                made.append(path)
            address = await self.prepare_incoming(spec, epoch, host, settings)
            try:
                vm = self._get(spec.name)
                disks_address = await blockjobs.export_disks(self._qmp(vm), len(paths), host)
                vm.exports = True
            except DriverError:
                await self.discard(spec.name)
                raise
        except DriverError:
            for path in made:
                blockjobs.remove(path)
            raise
        return IncomingDisks(
            address=address, disks_address=disks_address, paths=tuple(map(str, paths))
        )

    async def migrate_out_with_disks(
        self,
        name: str,
        address: str,
        disks_address: str,
        settings: MigrationSettings,
        on_progress: ProgressCallback | None = None,
        on_complete: CompletionHook | None = None,
    ) -> MigrationResult:
        vm = self._get(name)

        async def memory() -> MigrationResult:
            return await self.migrate_out(name, address, settings, on_progress, on_complete)

        count, timeout = len(vm.spec.disks), settings.timeout_s
        self._copying.add(name)
        try:
            return await blockjobs.with_mirrors(
                self._qmp(vm),
                count,
                disks_address,
                timeout,
                on_progress,
                memory,
                lambda: name in self._copy_cancelled,
            )
        except DiskMoveFailed:
            await self._after_failed_migration(vm)  # the copy failed: it runs on here
            raise
        finally:
            self._copying.discard(name)
            self._copy_cancelled.discard(name)
