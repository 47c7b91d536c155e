"""The sim driver's live migration and save/restore: memory sent in passes over a loopback
socket (:mod:`hvcluster.drivers.sim.transport`), timed by :mod:`hvcluster.drivers.sim.model`
on the driver's clock, cancellable, made to fail on demand
(:meth:`SimDriver.fail_next_migration`) or by chance (``params.migration_failure_rate``).
A saved state file names its VM and the CPU model it ran with; restoring it into another
model is refused, as QEMU would fail."""

from __future__ import annotations

import time
from abc import abstractmethod
from pathlib import Path
from typing import Any

from hvcluster.drivers.base import CompletionHook, MigrationResult, ProgressCallback, VMInfo
from hvcluster.drivers.errors import MigrationCancelled, MigrationFailed
from hvcluster.drivers.sim import model
from hvcluster.drivers.sim.state import SimVM, read_saved_state, write_saved_state
from hvcluster.drivers.sim.storage import SimStorage
from hvcluster.drivers.sim.transport import Incoming, Outgoing
from hvcluster.models.config import MigrationSettings
from hvcluster.models.lifecycle import VMState
from hvcluster.models.migration import Progress
from hvcluster.models.vm import VMSpec

MIB = model.MIB
TICK_S = 0.25  # how often a migrating VM is looked at (crashed, killed, cancelled)


class SimMigration(SimStorage):
    seed: int
    _vms: dict[str, SimVM]
    _gone: dict[str, VMInfo]
    _failing: dict[str, str]

    @abstractmethod
    def _refuse_if_running(self, name: str) -> None: ...

    @abstractmethod
    def _check_spec(self, spec: VMSpec) -> None: ...

    @abstractmethod
    async def _create(self, spec: VMSpec, epoch: int, state: VMState, reason: str) -> SimVM: ...

    @abstractmethod
    def _observe(self, vm: SimVM) -> None: ...

    @abstractmethod
    def _finish(self, vm: SimVM, state: VMState, reason: str) -> None: ...

    async def prepare_incoming(
        self, spec: VMSpec, epoch: int, host: str, settings: MigrationSettings | None = None
    ) -> str:
        self.bugs.trip("prepare_incoming", spec.name)
        host = self.bugs.listen_elsewhere.pop(spec.name, host)
        self._refuse_if_running(spec.name)
        self._check_spec(spec)
        vm = await self._create(spec, epoch, VMState.MIGRATING, "incoming migration")

        def outcome(completed: bool, reason: str, meta: dict[str, Any]) -> None:
            if self._vms.get(vm.name) is not vm:
                return
            if completed:
                vm.started = self.clock.now() - float(meta.get("age_s", 0.0))
                self._set(vm, VMState.PAUSED, reason)
            else:
                self._finish(vm, VMState.FAILED, reason)

        vm.incoming = Incoming(spec.name, outcome, spec.cpu_model)
        try:
            return await vm.incoming.listen(host)
        except MigrationFailed:
            self._finish(vm, VMState.FAILED, "could not listen")
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
        self.bugs.trip("migrate_out", name)
        vm = self._get(name)
        if vm.state not in (VMState.RUNNING, VMState.PAUSED):
            raise MigrationFailed(f"vm {name} is {vm.state}; only a running VM migrates")
        prior, started = vm.state, self.clock.now()
        vm.migrations += 1
        vm.cancel = False
        rng = model.vm_rng(self.seed, name, vm.epoch, f"migration-{vm.migrations}")
        passes, downtime_ms = model.migration_plan(
            self.params,
            vm.spec.memory_mib,
            settings.max_bandwidth_mib_s,
            settings.downtime_limit_ms,
        )
        fail_reason = self._failing.pop(name, None)
        if fail_reason is None and rng.random() < self.params.migration_failure_rate:
            fail_reason = "simulated failure"
        fail_at = rng.randrange(len(passes)) if fail_reason else -1
        out = Outgoing(name, address)
        await out.open({"age_s": started - vm.started, "cpu_model": vm.spec.cpu_model})
        self._set(vm, VMState.MIGRATING, "migrating out")
        total, sent = vm.spec.memory_mib * MIB, 0
        progress = Progress(bytes_total=total)
        try:
            for i, step in enumerate(passes):
                await self._sleep_migrating(vm, step.seconds)
                if i == fail_at:
                    raise MigrationFailed(
                        f"vm {name}: migration to {address} failed: {fail_reason}"
                    )
                sent += step.sent
                progress = Progress(
                    bytes_transferred=sent,
                    bytes_remaining=step.remaining,
                    bytes_total=total,
                    dirty_rate_pages_s=self.params.dirty_mib_s * MIB / 4096,
                    passes=i + 1,
                )
                if on_progress is not None:
                    on_progress(progress)
            await self._sleep_migrating(vm, downtime_ms / 1000)
            await out.finish()
        except MigrationFailed as e:
            cancelled = isinstance(e, MigrationCancelled)
            await out.abort("cancelled" if cancelled else fail_reason or "the source failed")
            if self._vms.get(name) is vm:
                self._set(vm, prior, "migration failed")
            raise
        finally:
            await out.close()
        self._set(vm, VMState.PAUSED, "migrated out")
        if on_complete is not None:
            await on_complete(time.time())
        total_ms = (self.clock.now() - started) * 1000
        return MigrationResult(total_ms=total_ms, downtime_ms=downtime_ms, progress=progress)

    async def cancel_migration(self, name: str) -> None:
        await self.cancel_disk_copy(name)  # a shared-nothing migration's disk copy
        vm = self._get(name)
        if vm.state == VMState.MIGRATING and vm.incoming is None:
            vm.cancel = True

    async def save(self, name: str, path: Path) -> MigrationResult:
        self.bugs.trip("save", name)
        vm = self._get(name)
        if vm.state not in (VMState.RUNNING, VMState.PAUSED):
            raise MigrationFailed(f"vm {name} is {vm.state}; it cannot be saved")
        prior, started = vm.state, self.clock.now()
        self._set(vm, VMState.MIGRATING, f"saving to {path}")
        await self._sleep_migrating(vm, vm.spec.memory_mib / self.params.save_mib_s)
        state = {
            "hvc-sim-state": 1,
            "vm": name,
            "epoch": vm.epoch,
            "age_s": self.clock.now() - vm.started,
            "cpu_model": vm.spec.cpu_model,
        }
        if name in self.bugs.unshared:
            self.bugs.unshared.discard(name)
            path = Path(path).with_suffix(".unshared")
        try:
            write_saved_state(Path(path), state)
        except MigrationFailed as e:
            self._set(vm, prior, f"save failed: {e}")
            raise
        self._set(vm, VMState.PAUSED, f"saved to {path}")
        total_ms = (self.clock.now() - started) * 1000
        return MigrationResult(total_ms=total_ms, downtime_ms=total_ms)

    async def restore(self, spec: VMSpec, epoch: int, path: Path, paused: bool = False) -> VMInfo:
        self.bugs.trip("restore", spec.name)
        self._refuse_if_running(spec.name)
        self._check_spec(spec)
        saved = read_saved_state(Path(path), spec.name)
        if saved.get("cpu_model", spec.cpu_model) != spec.cpu_model:
            raise MigrationFailed(
                f"vm {spec.name}: {path} holds the CPU state of model {saved['cpu_model']}, "
                f"not of {spec.cpu_model or 'the default'}"
            )
        await self.clock.sleep(spec.memory_mib / self.params.save_mib_s)
        state = VMState.PAUSED if paused else VMState.RUNNING
        vm = await self._create(spec, epoch, state, f"restored from {path}")
        vm.started = self.clock.now() - float(saved.get("age_s", 0.0))
        return vm.info()

    async def _sleep_migrating(self, vm: SimVM, seconds: float) -> None:
        remaining = seconds
        while True:
            step = min(remaining, TICK_S)
            await self.clock.sleep(step)
            remaining -= step
            self._observe(vm)
            if self._vms.get(vm.name) is not vm:
                raise MigrationFailed(f"vm {vm.name} died while migrating: {self._gone_reason(vm)}")
            if vm.cancel:
                raise MigrationCancelled(f"vm {vm.name}: migration cancelled")
            if remaining <= 0:
                return

    def _gone_reason(self, vm: SimVM) -> str:
        info = self._gone.get(vm.name)
        return info.reason if info else "gone"
