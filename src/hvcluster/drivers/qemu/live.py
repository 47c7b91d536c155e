"""The qemu driver's live migration: the target's QEMU started to receive (``-incoming``
deferred, then ``migrate-incoming`` on a free port), the source's ``migrate`` (QMP work in
:mod:`hvcluster.drivers.qemu.migration`), and its cancel.
"""

from __future__ import annotations

from hvcluster.drivers.base import CompletionHook, MigrationResult, ProgressCallback
from hvcluster.drivers.errors import MigrationFailed, QemuFailed
from hvcluster.drivers.qemu.migration import configure, run_migration
from hvcluster.drivers.qemu.supervision import QemuSupervisor
from hvcluster.drivers.qemu.vm import free_port, uri_host
from hvcluster.models.config import MigrationSettings
from hvcluster.models.errors import DriverError
from hvcluster.models.lifecycle import VMState
from hvcluster.models.vm import VMSpec


class LiveMigration(QemuSupervisor):
    async def prepare_incoming(
        self, spec: VMSpec, epoch: int, host: str, settings: MigrationSettings | None = None
    ) -> str:
        async with self._lock(spec.name):
            vm = await self._launch(spec, epoch, paused=True, incoming=True)
            try:
                monitor = self._qmp(vm)
                await configure(monitor, settings or MigrationSettings())
                last: Exception | None = None
                for _ in range(5):
                    address = f"tcp:{uri_host(host)}:{free_port(host)}"
                    try:
                        await monitor.execute("migrate-incoming", {"uri": address})
                        return address
                    except QemuFailed as e:
                        last = e
                raise QemuFailed(f"vm {spec.name}: no free migration port on {host}: {last}")
            except DriverError:
                await self._destroy(vm)
                self._gone.pop(spec.name, None)
                raise

    async def migrate_out(
        self,
        name: str,
        address: str,
        settings: MigrationSettings,
        on_progress: ProgressCallback | None = None,
        on_complete: CompletionHook | None = None,
    ) -> MigrationResult:
        vm = self._get(name)
        if vm.state not in (VMState.RUNNING, VMState.PAUSED):
            raise MigrationFailed(f"vm {name} is {vm.state}; only a running VM migrates")
        self._set_state(vm, VMState.MIGRATING, f"migrating to {address}")
        try:
            monitor = self._qmp(vm)
            result = await run_migration(monitor, address, settings, on_progress, on_complete)
        except DriverError as e:
            await self._after_failed_migration(vm)
            if isinstance(e, MigrationFailed):
                raise
            raise MigrationFailed(f"vm {name}: migration to {address} failed: {e}") from e
        self._set_state(vm, VMState.PAUSED, f"migrated to {address}")
        return result

    async def cancel_migration(self, name: str) -> None:
        await self.cancel_disk_copy(name)  # a shared-nothing migration's disk copy
        await self._qmp(self._get(name)).execute("migrate_cancel")
