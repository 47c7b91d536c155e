"""The qemu driver's live migration: the target's QEMU started to receive (``-incoming``
deferred, then ``migrate-incoming`` on a free port), the source's ``migrate`` (QMP work in
:mod:`hvcluster.drivers.qemu.migration`), and its cancel.
"""

from __future__ import annotations

from hvcluster.drivers.base import MigrationResult
from hvcluster.drivers.errors import MigrationFailed, PostcopyFailed, QemuFailed
from hvcluster.drivers.parts import Receive, Send
from hvcluster.drivers.qemu.migration import configure, run_migration
from hvcluster.drivers.qemu.supervision import QemuSupervisor
from hvcluster.drivers.qemu.vm import free_port, uri_host
from hvcluster.models.config import MigrationSettings
from hvcluster.models.errors import DriverError
from hvcluster.models.lifecycle import VMState


class QemuLive:
    """The qemu driver's live migration (its :class:`~hvcluster.drivers.parts.Migrator`)."""

    def __init__(self, vms: QemuSupervisor) -> None:
        self.vms = vms

    async def receive(self, incoming: Receive) -> str:
        spec, host, settings = incoming.spec, incoming.host, incoming.settings
        async with self.vms.lock(spec.name):
            vm = await self.vms.launch(spec, incoming.epoch, paused=True, incoming=True)
            try:
                monitor = self.vms.qmp(vm)
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
                await self.vms.destroy(vm)
                self.vms.gone.pop(spec.name, None)
                raise

    async def send(self, name: str, send: Send) -> MigrationResult:
        vm, address = self.vms.get(name), send.address
        if vm.state not in (VMState.RUNNING, VMState.PAUSED):
            raise MigrationFailed(f"vm {name} is {vm.state}; only a running VM migrates")
        self.vms.set_state(vm, VMState.MIGRATING, f"migrating to {address}")
        try:
            monitor = self.vms.qmp(vm)
            result = await run_migration(
                monitor, address, send.settings, send.on_progress, send.on_complete
            )
        except PostcopyFailed as e:  # never resumed here: killed (if QEMU's event has not)
            self.vms.fail_guest(vm, str(e))
            await self.vms.wait_exit(vm, 5.0)
            raise
        except DriverError as e:
            await self.vms.after_failed_migration(vm)
            if isinstance(e, MigrationFailed):
                raise
            raise MigrationFailed(f"vm {name}: migration to {address} failed: {e}") from e
        self.vms.set_state(vm, VMState.PAUSED, f"migrated to {address}")
        return result

    async def cancel(self, name: str) -> None:
        await self.vms.qmp(self.vms.get(name)).execute("migrate_cancel")
