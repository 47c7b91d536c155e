"""The ``sim`` driver: VMs that exist only as a model, with the same contract as ``qemu``.

Time comes from an injected :class:`~hvcluster.clock.Clock` (its wall-clock scale); every
random choice (boot time, load, crashes, failed migrations) from a source seeded by
``seed``, the VM's name and epoch, so a run with a :class:`~hvcluster.clock.ManualClock`
is reproducible:
the same seed gives the same :attr:`SimDriver.trace`.

With a ``run_dir``, each sim VM is also a real placeholder process with its pid in
``<run_dir>/vms/<name>/pid`` and its state in ``sim.json`` beside it: a new driver
re-attaches, and a killed node (or its watchdog) kills its sim VMs as it would QEMU.
Without a ``run_dir`` everything is in memory.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Mapping
from pathlib import Path

from hvcluster.clock import SYSTEM, Clock
from hvcluster.drivers.base import Driver, HostFacts, Usage, VMEvent, VMInfo
from hvcluster.drivers.errors import (
    AlreadyRunning,
    NotRunning,
    SpecError,
)
from hvcluster.drivers.runtime import (
    pid_alive,
    read_int,
    read_json,
    record_identity,
    vm_dir,
    vm_pid,
    vms_root,
    write_json,
)
from hvcluster.drivers.sim import model, placeholder
from hvcluster.drivers.sim.checkpoints import SimCheckpoints
from hvcluster.drivers.sim.console import SimConsoles
from hvcluster.drivers.sim.faults import Bug, SimBugs
from hvcluster.drivers.sim.links import SimHostLinks
from hvcluster.drivers.sim.migration import SimMigration
from hvcluster.drivers.sim.state import SimHost, SimVM, persist
from hvcluster.drivers.sim.storage import SimStorage
from hvcluster.host.network import Links
from hvcluster.models.console import ConsoleKind
from hvcluster.models.errors import DriverError
from hvcluster.models.lifecycle import VMState
from hvcluster.models.node import Capacity, Inventory
from hvcluster.models.storage import bridge_name
from hvcluster.models.vm import VMSpec

TICK_S = 0.25  # how often crashes and killed placeholders are looked for
KILL_WAIT_S = 1.0  # at most this long for a killed placeholder process to be gone


class SimDriver(Driver):
    kind = "sim"

    def __init__(
        self,
        run_dir: Path | None = None,
        clock: Clock | None = None,
        seed: int = 0,
        host: SimHost | None = None,
        params: model.SimParams | None = None,
        memory_transport: bool = False,
    ) -> None:
        """``memory_transport``: migrations between drivers of this process connect in
        memory, not over TCP (what a deterministic simulation needs: see
        :mod:`hvcluster.drivers.sim.transport`)."""
        super().__init__(run_dir)
        self.memory_transport = memory_transport
        self.clock: Clock = clock or SYSTEM
        self.seed = seed
        self.host = host or SimHost()
        self.params = params or model.SimParams()
        self.trace: list[tuple[float, str, str, str]] = []  # (time, vm, state, reason)
        self.running: dict[str, SimVM] = {}  # by VM name
        self.gone: dict[str, VMInfo] = {}  # stopped or crashed here, not started again since
        # CPU use set by a test or a scenario (percent of one host CPU, by VM name; it stays
        # with the name across restarts and moves), and the host's own use besides guests
        self.cpu_set: dict[str, float] = {}
        self.host_overhead_cores = 0.0
        self.bugs = SimBugs()
        self.books = self
        self.migrations = SimMigration(self)
        self.storage = SimStorage(self)
        self.migrator, self.saver, self.disks = self.migrations, self.migrations, self.storage
        self.checkpointer = SimCheckpoints(self)
        self._ticker: asyncio.Task[None] | None = None
        run_dir = self.run_dir
        self.consoles = SimConsoles(lambda vm: vm_dir(run_dir, vm) if run_dir else None)
        if self.run_dir is not None:
            vms_root(self.run_dir).mkdir(parents=True, exist_ok=True)

    # -- fault injection --------------------------------------------------------------------

    def inject_crash(self, name: str, at: float | None = None, reason: str = "crashed") -> None:
        """Crash ``name`` at clock time ``at`` (now if None)."""
        vm = self.get(name)
        vm.crash_at = self.clock.wall() if at is None else at
        vm.crash_reason = reason
        self.observe(vm)

    def inject_guest_panic(self, name: str) -> None:
        """``name``'s guest OS panics now: a VM monitored for panics (``spec.monitor.panic``)
        fails; a panicked guest answers no heartbeat either."""
        vm = self.get(name)
        vm.panicked_at = vm.silent_since = self.clock.wall()
        self.observe(vm)

    def inject_guest_hang(self, name: str) -> None:
        """``name``'s guest OS stops answering its heartbeat now (its process runs on): a VM
        with ``spec.monitor.heartbeat_timeout_s`` fails that long after."""
        vm = self.get(name)
        vm.silent_since = self.clock.wall()
        self.observe(vm)

    def fail_next_migration(
        self, name: str, reason: str = "injected failure", in_postcopy: bool = False
    ) -> None:
        """The next live migration of ``name`` fails with ``reason``: in precopy, or, with
        ``in_postcopy`` (and postcopy on and reached), right after the guest switched."""
        self.migrations.failing[name] = reason
        if in_postcopy:
            self.migrations.failing_in_postcopy.add(name)

    def fail_next_disk_move(self, name: str, reason: str = "injected failure") -> None:
        """The next disk move or disk copy of ``name`` fails half-way with ``reason``."""
        self.storage.failing[name] = reason

    def inject_bug(
        self, operation: str, vm: str, message: str = "injected bug", times: int | None = 1
    ) -> Bug:
        """The next ``times`` calls (None: every call) of ``operation`` for ``vm`` raise a
        ``RuntimeError`` (see :mod:`hvcluster.drivers.sim.faults`); the bug counts its hits."""
        return self.bugs.add(operation, vm, message, times)

    def save_unshared(self, vm: str) -> None:
        """The next save of ``vm`` reports success but writes its state beside the path it
        was given (``.unshared``), as a host whose volume is not the shared one would."""
        self.bugs.unshared.add(vm)

    def refuse_next_resume(self, vm: str, reason: str) -> None:
        """The next ``resume`` of ``vm`` fails with a :class:`DriverError` saying ``reason``
        (as QEMU's ``cont`` refused while another host held the disks' locks)."""
        self.bugs.refuse_resume[vm] = reason

    def listen_elsewhere(self, vm: str, host: str) -> None:
        """The next incoming migration of ``vm`` listens on ``host``, not the one asked
        (its address then names a host that is not this node's)."""
        self.bugs.listen_elsewhere[vm] = host

    def serve_disks_elsewhere(self, vm: str, host: str) -> None:
        """The next shared-nothing incoming migration of ``vm`` serves its disks on ``host``,
        not the one asked (its ``disks_address`` then names a host that is not this node's)."""
        self.bugs.disks_elsewhere[vm] = host

    # -- host and lifecycle -----------------------------------------------------------------

    def set_volumes(self, mounts: Mapping[str, Path]) -> None:
        self.host = self.host.model_copy(update={"volumes": dict(mounts)})

    async def inventory(self) -> HostFacts:
        return HostFacts(
            capacity=Capacity(cpus=self.host.cpus, memory_mib=self.host.memory_mib),
            inventory=Inventory(
                host_cpu=self.host.host_cpu,
                accelerator="sim",
                qemu_version="",
                driver="sim",
                guest_cpu_model=self.host.host_cpu,
                guest_cpu_models=self.host.guest_models,
            ),
        )

    def links(self) -> Links:
        return SimHostLinks(self)

    async def start(self, spec: VMSpec, epoch: int, paused: bool = False) -> VMInfo:
        self.bugs.trip("start", spec.name)
        self.refuse_if_running(spec.name)
        self.check_spec(spec)
        state = VMState.PAUSED if paused else VMState.RUNNING
        vm = await self.create(spec, epoch, state, "started")
        return vm.info()

    async def shutdown(self, name: str, timeout: float) -> VMInfo:
        vm = self.get(name)
        age = self.clock.wall() - vm.started
        listens = vm.state == VMState.RUNNING and age >= vm.profile.boot_s
        self.set_state(vm, VMState.STOPPING, "shutdown requested")
        wait = min(self.params.shutdown_s, timeout) if listens else timeout
        await self.clock.sleep(wait)
        if self.running.get(name) is vm:
            graceful = listens and self.params.shutdown_s <= timeout
            why = "the guest powered off" if graceful else f"forced off after {timeout}s"
            self.finish(vm, VMState.STOPPED, why)
        return self.gone[name]

    async def kill(self, name: str) -> VMInfo:
        self.bugs.trip("kill", name)
        self.finish(self.get(name), VMState.STOPPED, "killed on request")
        return self.gone[name]

    async def discard(self, name: str) -> None:
        self.bugs.trip("discard", name)
        self.consoles.drop(name)
        vm = self.running.get(name)
        if vm is not None:
            self.finish(vm, VMState.STOPPED, "discarded")
        elif self.run_dir is not None:
            d = vm_dir(self.run_dir, name)
            pid = vm_pid(d)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(d, ignore_errors=True)
        self.gone.pop(name, None)

    async def attach(self) -> builtins.list[VMInfo]:
        if self.run_dir is None:
            return [vm.info() for vm in self.running.values()]
        attached = []
        for d in sorted(vms_root(self.run_dir).iterdir()):
            if d.is_dir() and d.name not in self.running:
                vm = self._attach_one(d)
                if vm is not None:
                    attached.append(vm.info())
        if self.running:
            self._ensure_ticker()
        return attached

    async def usage(self, name: str) -> Usage:
        vm = self.get(name)
        self.observe(vm)
        if vm.state != VMState.RUNNING:
            return Usage(cpu_percent=0.0, memory_mib=vm.spec.memory_mib * 0.1)
        age = self.clock.wall() - vm.started
        cpu = self.cpu_set.get(name)
        return Usage(
            cpu_percent=(
                cpu
                if cpu is not None
                else model.cpu_percent(self.params, vm.profile, vm.spec.vcpus, age)
            ),
            memory_mib=model.memory_mib(self.params, vm.profile, vm.spec.memory_mib, age),
        )

    async def host_cpu_cores(self) -> float:
        """Its guests' use (as :meth:`usage` reports it) plus ``host_overhead_cores``."""
        busy = self.host_overhead_cores
        for name, vm in list(self.running.items()):
            if vm.state is VMState.RUNNING:
                busy += (await self.usage(name)).cpu_percent / 100
        return busy

    async def pause(self, name: str) -> VMInfo:
        vm = self.get(name)
        if vm.state not in (VMState.RUNNING, VMState.PAUSED):
            raise NotRunning(name, f"it is {vm.state}")
        self.set_state(vm, VMState.PAUSED, "paused on request")
        return vm.info()

    async def resume(self, name: str) -> VMInfo:
        self.bugs.trip("resume", name)
        refused = self.bugs.refuse_resume.pop(name, None)
        if refused is not None:
            raise DriverError(f"vm {name}: {refused}")
        vm = self.get(name)
        if vm.state not in (VMState.RUNNING, VMState.PAUSED):
            raise NotRunning(name, f"it is {vm.state}")
        self.set_state(vm, VMState.RUNNING, "resumed on request")
        return vm.info()

    async def console(self, name: str, kind: ConsoleKind) -> Path:
        """A fake but real console socket (see :mod:`hvcluster.drivers.sim.console`)."""
        self.get(name)
        return await self.consoles.serve(name, kind)

    async def close(self) -> None:
        self.consoles.close()  # (a QEMU's sockets stay with it; these end with the driver)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        for vm in self.running.values():
            if vm.moving.incoming is not None:
                await vm.moving.incoming.close()
        self.running.clear()

    # -- inside -----------------------------------------------------------------------------

    def look(self, name: str | None = None) -> None:
        for vm in [*self.running.values()] if name is None else [self.running.get(name)]:
            if vm is not None:
                self.observe(vm)

    def get(self, name: str) -> SimVM:
        vm = self.running.get(name)
        if vm is not None:
            self.observe(vm)
        vm = self.running.get(name)
        if vm is None:
            raise NotRunning(name)
        return vm

    def refuse_if_running(self, name: str) -> None:
        if name in self.running:
            raise AlreadyRunning(name, self.running[name].pid)
        if self.run_dir is not None and (pid := vm_pid(vm_dir(self.run_dir, name))) is not None:
            raise AlreadyRunning(name, pid)

    def check_spec(self, spec: VMSpec) -> None:
        if spec.cpu_model and spec.cpu_model not in self.host.guest_models:
            raise SpecError(f"this host cannot give guests CPU model {spec.cpu_model}", "cpu_model")
        if spec.memory_mib > self.host.memory_mib:
            raise SpecError(
                f"{spec.memory_mib} MiB is more than this host's {self.host.memory_mib} MiB",
                "memory_mib",
            )
        for i, disk in enumerate(spec.disks):
            if disk.volume is not None and disk.volume not in self.host.volumes:
                raise SpecError(
                    f"volume {disk.volume!r} is not mounted on this host", f"disks[{i}].volume"
                )
            root = self.host.volumes.get(disk.volume or "", Path("/"))
            if self.host.check_disks and not (Path(root) / disk.path).is_file():
                raise SpecError(f"disk image {disk.path} does not exist", f"disks[{i}].path")
        for i, nic in enumerate(spec.nics):
            bridge = bridge_name(nic.switch)
            if bridge not in self.host.switches:
                raise SpecError(
                    f"no bridge {bridge!r} for switch {nic.switch!r} on this host",
                    f"nics[{i}].switch",
                )

    async def create(self, spec: VMSpec, epoch: int, state: VMState, reason: str) -> SimVM:
        now = self.clock.wall()
        prof = model.profile(self.params, model.vm_rng(self.seed, spec.name, epoch))
        crash_at = now + prof.crash_after_s if prof.crash_after_s is not None else None
        vm = SimVM(spec, epoch, VMState.STARTING, now, now, prof, crash_at=crash_at)
        if self.run_dir is not None:
            d = vm_dir(self.run_dir, spec.name)
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            write_json(
                d / "spec.json",
                {"spec": spec.model_dump(mode="json"), "epoch": epoch, "started": now},
            )
            vm.pid = await placeholder.spawn()
            vm.pid_start = record_identity(d, vm.pid)
        self.running[spec.name] = vm
        self.gone.pop(spec.name, None)
        self.set_state(vm, state, reason)
        self._ensure_ticker()
        return vm

    def _attach_one(self, d: Path) -> SimVM | None:
        record, saved, pid = read_json(d / "spec.json"), read_json(d / "sim.json"), vm_pid(d)
        try:
            spec = VMSpec.model_validate(record["spec"]) if record else None
        except ValueError:
            spec = None
        incoming = bool(saved and saved.get("state") == VMState.MIGRATING and saved.get("incoming"))
        if pid is None or spec is None or record is None or saved is None or incoming:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(d, ignore_errors=True)
            why = "its process died while no agent watched" if pid is None else "lost its state"
            self._record_gone(d.name, VMState.FAILED, why, int((record or {}).get("epoch", 0)))
            return None
        epoch = int(record["epoch"])
        prof = model.profile(self.params, model.vm_rng(self.seed, spec.name, epoch))
        state = VMState(saved["state"])
        if state == VMState.MIGRATING:  # an outgoing migration died with the old driver
            state = VMState.RUNNING
        vm = SimVM(
            spec,
            epoch,
            state,
            float(saved["since"]),
            float(saved["started"]),
            prof,
            reason=str(saved.get("reason", "")),
            pid=pid,
            pid_start=read_int(d / "pid.start"),
            crash_at=saved.get("crash_at"),
        )
        self.running[spec.name] = vm
        return vm

    def observe(self, vm: SimVM) -> None:
        """Notice what happened to a VM by now: its process was killed, or it crashed."""
        if self.running.get(vm.name) is not vm:
            return
        if vm.pid is not None and not pid_alive(vm.pid, vm.pid_start):
            self.finish(vm, VMState.FAILED, "its process was killed")
        elif vm.crash_at is not None and self.clock.wall() >= vm.crash_at:
            self.finish(vm, VMState.FAILED, vm.crash_reason)
        elif (why := guest_failure(vm, self.clock.wall())) is not None:
            self.finish(vm, VMState.FAILED, why)

    def _ensure_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick(), name="sim-driver-ticker")

    async def _tick(self) -> None:
        while True:
            await self.clock.sleep(TICK_S)
            for vm in builtins.list(self.running.values()):
                self.observe(vm)

    def set_state(self, vm: SimVM, state: VMState, reason: str) -> None:
        if state == vm.state:
            return
        vm.state, vm.since, vm.reason = state, self.clock.wall(), reason
        self.trace.append((vm.since, vm.name, state.value, reason))
        if self.run_dir is not None:
            with contextlib.suppress(OSError):
                persist(vm, vm_dir(self.run_dir, vm.name))
        self._emit(VMEvent(name=vm.name, state=state, at=vm.since, epoch=vm.epoch, reason=reason))

    def finish(self, vm: SimVM, state: VMState, reason: str) -> None:
        if self.running.get(vm.name) is not vm:
            return
        del self.running[vm.name]
        self.consoles.drop(vm.name)
        if vm.pid is not None and pid_alive(vm.pid, vm.pid_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(vm.pid, signal.SIGKILL)
            # As QEMU's kill does: return once it is gone (SIGKILL lands within moments, but
            # not before os.kill returns; seen once in CI as a pid still alive after kill).
            deadline = time.monotonic() + KILL_WAIT_S
            while pid_alive(vm.pid, vm.pid_start) and time.monotonic() < deadline:
                time.sleep(0.005)
        if vm.moving.incoming is not None:
            incoming, vm.moving.incoming = vm.moving.incoming, None
            asyncio.get_running_loop().create_task(incoming.close())
        if self.run_dir is not None:
            shutil.rmtree(vm_dir(self.run_dir, vm.name), ignore_errors=True)
        vm.state, vm.reason, vm.since = state, reason, self.clock.wall()
        self._record_gone(vm.name, state, reason, vm.epoch)

    def _record_gone(self, name: str, state: VMState, reason: str, epoch: int) -> None:
        now = self.clock.wall()
        self.gone[name] = VMInfo(name=name, state=state, since=now, epoch=epoch, reason=reason)
        self.trace.append((now, name, state.value, reason))
        self._emit(VMEvent(name=name, state=state, at=now, epoch=epoch, reason=reason))


def guest_failure(vm: SimVM, now: float) -> str | None:
    """What the qemu driver's guest monitoring would say of ``vm`` by ``now`` (the same
    reasons), or None. Simplified: a silent guest's time counts whatever its state."""
    monitor = vm.spec.monitor
    if vm.panicked_at is not None and monitor.panic:
        return "guest panicked (pvpanic)"
    timeout = monitor.heartbeat_timeout_s
    if vm.silent_since is not None and monitor.heartbeat and now - vm.silent_since > timeout:
        return f"guest not answering: no heartbeat for {timeout:g}s (guest-sync)"
    return None
