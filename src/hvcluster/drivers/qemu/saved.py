"""The qemu driver's quick migration: the guest's state saved to a file (``migrate`` to an fd
QEMU is handed) and restored from it into a new QEMU (``migrate-incoming`` from the file).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from pathlib import Path

from hvcluster.drivers.base import MigrationResult, VMInfo
from hvcluster.drivers.errors import MigrationFailed, QemuFailed
from hvcluster.drivers.qemu.migration import configure, run_migration
from hvcluster.drivers.qemu.supervision import QemuSupervisor
from hvcluster.drivers.qemu.vm import QemuVM, saved_state
from hvcluster.models.config import MigrationSettings
from hvcluster.models.errors import DriverError
from hvcluster.models.lifecycle import VMState
from hvcluster.models.vm import VMSpec


class QemuSaver:
    """The qemu driver's quick migration (its :class:`~hvcluster.drivers.parts.Saver`)."""

    def __init__(self, vms: QemuSupervisor) -> None:
        self.vms = vms

    async def save(self, name: str, path: Path) -> MigrationResult:
        vm = self.vms.get(name)
        monitor = self.vms.qmp(vm)
        was_running = vm.state == VMState.RUNNING
        await monitor.execute("stop")
        self.vms.set_state(vm, VMState.MIGRATING, f"saving to {path}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as e:
            await self.vms.after_failed_migration(vm, resume=was_running)
            raise MigrationFailed(f"vm {name}: cannot write saved state to {path}: {e}") from e
        try:
            monitor.send_fd(fd)
            await monitor.execute("getfd", {"fdname": "hvc-save"})
            result = await run_migration(monitor, "fd:hvc-save", MigrationSettings(), None)
            os.fsync(fd)
        except DriverError as e:
            await self.vms.after_failed_migration(vm, resume=was_running)
            raise MigrationFailed(f"vm {name}: saving to {path} failed: {e}") from e
        finally:
            os.close(fd)
        self.vms.set_state(vm, VMState.PAUSED, f"saved to {path}")
        return result

    async def restore(self, spec: VMSpec, epoch: int, path: Path, paused: bool = False) -> VMInfo:
        path = saved_state(path)
        async with self.vms.lock(spec.name):
            vm = await self.vms.launch(spec, epoch, paused=True, incoming=True)
            try:
                monitor = self.vms.qmp(vm)
                await configure(monitor, MigrationSettings())
                await monitor.execute(
                    "migrate-incoming", {"uri": f"exec:cat {shlex.quote(str(path))}"}
                )
                await self._wait_incoming(vm, MigrationSettings().timeout_s)
                if not paused:
                    await monitor.execute("cont")
                    self.vms.set_state(vm, VMState.RUNNING, f"restored from {path}")
            except DriverError as e:
                await self.vms.destroy(vm)
                self.vms.gone.pop(spec.name, None)
                raise MigrationFailed(f"vm {spec.name}: restore from {path} failed: {e}") from e
            return vm.info()

    async def _wait_incoming(self, vm: QemuVM, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if vm.exited.is_set():
                raise QemuFailed(f"QEMU exited: {vm.reason}")
            status = await self.vms.qmp(vm).execute("query-status")
            if status.get("status") != "inmigrate":
                self.vms.set_state(vm, VMState.PAUSED, "incoming state loaded")
                return
            if time.monotonic() > deadline:
                raise QemuFailed(f"incoming state not loaded in {timeout}s")
            await asyncio.sleep(0.05)
