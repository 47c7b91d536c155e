"""The sim driver's live migration and save/restore: memory sent in passes over a loopback
socket (:mod:`hvcluster.drivers.sim.transport`), timed by :mod:`hvcluster.drivers.sim.model`
on the driver's clock, cancellable, made to fail on demand
(:meth:`SimDriver.fail_next_migration`, in precopy or once postcopy began) or by chance
(``params.migration_failure_rate``). With ``postcopy`` on, a migration that has not converged
after ``postcopy_after_passes`` passes switches: the target may run the guest from then, and a
failure after it kills both copies, as the qemu driver does.
A saved state file names its VM, the CPU model and the size (memory, vCPUs) it ran with;
restoring it into another model or size is refused, and so is a live state sent to a
target of another, as QEMU would fail."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hvcluster.drivers.base import MigrationResult, VMInfo
from hvcluster.drivers.errors import MigrationCancelled, MigrationFailed, PostcopyFailed
from hvcluster.drivers.parts import Receive, Send
from hvcluster.drivers.sim import model
from hvcluster.drivers.sim.state import SimVM, read_saved_state, write_saved_state
from hvcluster.drivers.sim.transport import Incoming, Outgoing
from hvcluster.models.lifecycle import VMState
from hvcluster.models.migration import Progress
from hvcluster.models.vm import VMSpec

if TYPE_CHECKING:
    from hvcluster.drivers.sim.driver import SimDriver

MIB = model.MIB
TICK_S = 0.25  # how often a migrating VM is looked at (crashed, killed, cancelled)


class SimMigration:
    """The sim driver's live and quick migration (its :class:`~hvcluster.drivers.parts.Migrator`
    and :class:`~hvcluster.drivers.parts.Saver`)."""

    def __init__(self, driver: SimDriver) -> None:
        self.driver = driver
        self.failing: dict[str, str] = {}  # vm -> reason its next migration fails
        self.failing_in_postcopy: set[str] = set()  # ... and it fails once in postcopy

    async def receive(self, incoming: Receive) -> str:
        spec, epoch = incoming.spec, incoming.epoch
        self.driver.bugs.trip("prepare_incoming", spec.name)
        host = self.driver.bugs.listen_elsewhere.pop(spec.name, incoming.host)
        self.driver.refuse_if_running(spec.name)
        self.driver.check_spec(spec)
        vm = await self.driver.create(spec, epoch, VMState.MIGRATING, "incoming migration")

        def outcome(completed: bool, reason: str, meta: dict[str, Any]) -> None:
            if self.driver.running.get(vm.name) is not vm:
                return
            if completed:
                vm.started = self.driver.clock.wall() - float(meta.get("age_s", 0.0))
                self.driver.set_state(vm, VMState.PAUSED, reason)
            else:
                self.driver.finish(vm, VMState.FAILED, reason)

        def lost(reason: str) -> None:  # postcopy failed: the pages still there are gone
            if self.driver.running.get(vm.name) is vm:
                self.driver.finish(vm, VMState.FAILED, f"incoming migration {reason}")

        vm.moving.incoming = Incoming(spec.name, outcome, spec.cpu_model, _size(spec), lost)
        try:
            if self.driver.memory_transport:
                return vm.moving.incoming.listen_in_memory(host)
            return await vm.moving.incoming.listen(host)
        except MigrationFailed:
            self.driver.finish(vm, VMState.FAILED, "could not listen")
            self.driver.gone.pop(spec.name, None)
            raise

    async def send(self, name: str, send: Send) -> MigrationResult:
        address, settings, on_progress = send.address, send.settings, send.on_progress
        self.driver.bugs.trip("migrate_out", name)
        vm = self.driver.get(name)
        if vm.state not in (VMState.RUNNING, VMState.PAUSED):
            raise MigrationFailed(f"vm {name} is {vm.state}; only a running VM migrates")
        prior, started = vm.state, self.driver.clock.wall()
        vm.moving.count += 1
        vm.moving.cancel = False
        rng = model.vm_rng(self.driver.seed, name, vm.epoch, f"migration-{vm.moving.count}")
        passes, downtime_ms = model.migration_plan(
            self.driver.params,
            vm.spec.memory_mib,
            settings.max_bandwidth_mib_s,
            settings.downtime_limit_ms,
        )
        fail_reason = self.failing.pop(name, None)
        if fail_reason is None and rng.random() < self.driver.params.migration_failure_rate:
            fail_reason = "simulated failure"
        fail_at = rng.randrange(len(passes)) if fail_reason else -1
        # Postcopy starts once precopy has made its passes without converging (QEMU's
        # dirty-bitmap syncs, as the qemu driver counts them); a failure asked for in postcopy
        # comes right after the switch.
        switch_after = settings.postcopy_after_passes
        if not settings.postcopy or len(passes) <= switch_after:
            switch_after = -1
        fail_in_postcopy = None  # why it fails once postcopy began, if it is to
        if name in self.failing_in_postcopy and switch_after > 0:
            self.failing_in_postcopy.discard(name)
            fail_in_postcopy, fail_at = fail_reason, -1
        out = Outgoing(name, address, self.driver.memory_transport)
        await out.open(
            {"age_s": started - vm.started, "cpu_model": vm.spec.cpu_model} | _size(vm.spec)
        )
        self.driver.set_state(vm, VMState.MIGRATING, "migrating out")
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
                    dirty_rate_pages_s=self.driver.params.dirty_mib_s * MIB / 4096,
                    passes=i + 1,
                    postcopy=progress.postcopy,
                )
                if on_progress is not None:
                    on_progress(progress)
                if i + 1 == switch_after:
                    progress = await self._switch(vm, out, send, progress, fail_in_postcopy)
            if switch_after < 0:
                await self._sleep_migrating(vm, downtime_ms / 1000)
            await out.finish()
        except PostcopyFailed:
            raise
        except MigrationFailed as e:
            if progress.postcopy:  # the target runs it and lacks what was not sent: lost
                await out.abort(str(e))
                self.driver.finish(vm, VMState.FAILED, "migration failed in postcopy")
                raise PostcopyFailed(f"{e} (in postcopy: the guest's memory is lost)") from e
            cancelled = isinstance(e, MigrationCancelled)
            await out.abort("cancelled" if cancelled else fail_reason or "the source failed")
            if self.driver.running.get(name) is vm:
                self.driver.set_state(vm, prior, "migration failed")
            raise
        finally:
            await out.close()
        self.driver.set_state(vm, VMState.PAUSED, "migrated out")
        if send.on_complete is not None and not progress.postcopy:
            await send.on_complete(self.driver.clock.wall())
        total_ms = (self.driver.clock.wall() - started) * 1000
        return MigrationResult(total_ms=total_ms, downtime_ms=downtime_ms, progress=progress)

    async def _switch(
        self, vm: SimVM, out: Outgoing, send: Send, progress: Progress, fail_reason: str | None
    ) -> Progress:
        """Postcopy begins: the guest stops here for good and may run on the target, which
        the completion hook lets happen. A failure asked for in postcopy comes now: both
        copies are killed (this one must never resume: the target has changed pages it
        lacks), and the VM can only start again from its disk."""
        self.driver.set_state(vm, VMState.PAUSED, "postcopy: the guest runs on the target")
        await out.postcopy()
        progress = progress.model_copy(update={"postcopy": True})
        if send.on_progress is not None:
            send.on_progress(progress)
        if send.on_complete is not None:
            await send.on_complete(self.driver.clock.wall())
        if fail_reason is not None:
            await out.abort(fail_reason)
            self.driver.finish(vm, VMState.FAILED, f"migration failed in postcopy: {fail_reason}")
            raise PostcopyFailed(
                f"vm {vm.name}: migration to {send.address} failed in postcopy ({fail_reason}): "
                "the guest's memory was split between both hosts and is lost, with whatever it "
                "had not written to its disk; both copies are killed and the VM starts again "
                "from its disk"
            )
        return progress

    async def cancel(self, name: str) -> None:
        vm = self.driver.get(name)
        if vm.state == VMState.MIGRATING and vm.moving.incoming is None:
            vm.moving.cancel = True

    async def save(self, name: str, path: Path) -> MigrationResult:
        self.driver.bugs.trip("save", name)
        vm = self.driver.get(name)
        if vm.state not in (VMState.RUNNING, VMState.PAUSED):
            raise MigrationFailed(f"vm {name} is {vm.state}; it cannot be saved")
        prior, started = vm.state, self.driver.clock.wall()
        self.driver.set_state(vm, VMState.MIGRATING, f"saving to {path}")
        await self._sleep_migrating(vm, vm.spec.memory_mib / self.driver.params.save_mib_s)
        state = {
            "hvc-sim-state": 1,
            "vm": name,
            "epoch": vm.epoch,
            "age_s": self.driver.clock.wall() - vm.started,
            "cpu_model": vm.spec.cpu_model,
        } | _size(vm.spec)
        if name in self.driver.bugs.unshared:
            self.driver.bugs.unshared.discard(name)
            path = Path(path).with_suffix(".unshared")
        try:
            write_saved_state(Path(path), state)
        except MigrationFailed as e:
            self.driver.set_state(vm, prior, f"save failed: {e}")
            raise
        self.driver.set_state(vm, VMState.PAUSED, f"saved to {path}")
        total_ms = (self.driver.clock.wall() - started) * 1000
        return MigrationResult(total_ms=total_ms, downtime_ms=total_ms)

    async def restore(self, spec: VMSpec, epoch: int, path: Path, paused: bool) -> VMInfo:
        self.driver.bugs.trip("restore", spec.name)
        self.driver.refuse_if_running(spec.name)
        self.driver.check_spec(spec)
        saved = read_saved_state(Path(path), spec.name)
        if saved.get("cpu_model", spec.cpu_model) != spec.cpu_model:
            raise MigrationFailed(
                f"vm {spec.name}: {path} holds the CPU state of model {saved['cpu_model']}, "
                f"not of {spec.cpu_model or 'the default'}"
            )
        other = {k: saved[k] for k, v in _size(spec).items() if k in saved and saved[k] != v}
        if other:
            raise MigrationFailed(
                f"vm {spec.name}: {path} holds the state of a guest of {other}, not of "
                f"{_size(spec)}"
            )
        await self.driver.clock.sleep(spec.memory_mib / self.driver.params.save_mib_s)
        state = VMState.PAUSED if paused else VMState.RUNNING
        vm = await self.driver.create(spec, epoch, state, f"restored from {path}")
        vm.started = self.driver.clock.wall() - float(saved.get("age_s", 0.0))
        return vm.info()

    async def _sleep_migrating(self, vm: SimVM, seconds: float) -> None:
        remaining = seconds
        while True:
            step = min(remaining, TICK_S)
            await self.driver.clock.sleep(step)
            remaining -= step
            self.driver.observe(vm)
            if self.driver.running.get(vm.name) is not vm:
                raise MigrationFailed(f"vm {vm.name} died while migrating: {self._gone_reason(vm)}")
            if vm.moving.cancel:
                raise MigrationCancelled(f"vm {vm.name}: migration cancelled")
            if remaining <= 0:
                return

    def _gone_reason(self, vm: SimVM) -> str:
        info = self.driver.gone.get(vm.name)
        return info.reason if info else "gone"


def _size(spec: VMSpec) -> dict[str, int]:
    """What a guest's state must match to be loaded into another (QEMU refuses a RAM block
    of another length, or vCPUs the target has not)."""
    return {"memory_mib": spec.memory_mib, "vcpus": spec.vcpus}
