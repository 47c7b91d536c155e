"""The ``qemu`` driver: real VMs, one detached QEMU each, driven over QMP.

QEMU daemonizes itself (own session, reparented away from the agent), so killing the agent
never kills a VM; a new :class:`QemuDriver` on the same run dir re-attaches through
:meth:`attach`. States come from QMP events (STOP, RESUME, SHUTDOWN, MIGRATION) and from QEMU
hanging up its QMP socket when it exits.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hvcluster.drivers.base import (
    CompletionHook,
    HostFacts,
    MigrationResult,
    ProgressCallback,
    Usage,
    VMEvent,
    VMInfo,
    known_vm,
    known_vms,
)
from hvcluster.drivers.errors import (
    AlreadyRunning,
    MigrationFailed,
    NotRunning,
    QemuFailed,
)
from hvcluster.drivers.qemu import blockjobs
from hvcluster.drivers.qemu.cmdline import Launch, check_spec, qemu_argv, tap_name
from hvcluster.drivers.qemu.host import (
    cpu_model_and_flags,
    host_cpus,
    host_memory_mib,
    qemu_version,
)
from hvcluster.drivers.qemu.migration import ACTIVE, configure, run_migration
from hvcluster.drivers.qemu.monitor import Monitor
from hvcluster.drivers.qemu.probe import decide_accelerator
from hvcluster.drivers.qemu.process import enslave_tap, kill_and_wait, launch, log_tail, wait_gone
from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.drivers.qemu.storage import StorageMigration
from hvcluster.drivers.qemu.vm import RUNSTATES, QemuVM, free_port, saved_state, uri_host
from hvcluster.drivers.runtime import (
    pid_alive,
    process_cpu_and_rss,
    read_int,
    read_json,
    record_identity,
    retire,
    vm_dir,
    vm_pid,
    vms_root,
    write_json,
)
from hvcluster.models.config import MigrationSettings
from hvcluster.models.errors import DriverError
from hvcluster.models.lifecycle import VMState
from hvcluster.models.node import Capacity, Inventory
from hvcluster.models.storage import bridge_name
from hvcluster.models.vm import VMSpec

log = logging.getLogger(__name__)


class QemuDriver(StorageMigration):
    kind = "qemu"

    def __init__(self, run_dir: Path, settings: QemuSettings | None = None) -> None:
        super().__init__(run_dir)
        self.run_dir: Path = Path(run_dir).absolute()
        self.settings = settings or QemuSettings()
        self._vms: dict[str, QemuVM] = {}
        self._gone: dict[str, VMInfo] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._accel: tuple[str, str] | None = None
        vms_root(self.run_dir).mkdir(parents=True, exist_ok=True)

    # -- host -------------------------------------------------------------------------------

    def set_volumes(self, mounts: Mapping[str, Path]) -> None:
        self.settings = self.settings.model_copy(update={"volumes": dict(mounts)})

    async def accelerator(self) -> tuple[str, str]:
        """``(kvm|tcg, why)``, decided once per driver (the probe itself is cached per host)."""
        if self._accel is None:
            self._accel = await decide_accelerator(self.settings)
        return self._accel

    async def inventory(self) -> HostFacts:
        accel, _ = await self.accelerator()
        model, flags = cpu_model_and_flags()
        return HostFacts(
            capacity=Capacity(cpus=host_cpus(), memory_mib=host_memory_mib()),
            inventory=Inventory(
                cpu_model=model,
                cpu_flags=flags,
                accelerator=accel,
                qemu_version=qemu_version(self.settings.binary),
                driver=self.kind,
            ),
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, spec: VMSpec, epoch: int, paused: bool = False) -> VMInfo:
        async with self._lock(spec.name):
            vm = await self._launch(spec, epoch, paused=paused, incoming=False)
            return vm.info()

    async def shutdown(self, name: str, timeout: float) -> VMInfo:
        async with self._lock(name):
            vm = self._get(name)
            vm.stopping = True
            if vm.monitor is not None:
                with contextlib.suppress(QemuFailed):
                    await vm.monitor.execute("system_powerdown")
            if not await self._wait_exit(vm, timeout):
                log.info("vm %s: no power-off in %ss, forcing it off", name, timeout)
                await kill_and_wait(vm.pid, vm.start)
                await self._wait_exit(vm, 10.0)
            return self._gone[name]

    async def kill(self, name: str) -> VMInfo:
        async with self._lock(name):
            vm = self._get(name)
            await self._destroy(vm)
            return self._gone[name]

    async def discard(self, name: str) -> None:
        async with self._lock(name):
            vm = self._vms.get(name)
            if vm is not None:
                await self._destroy(vm)
            else:
                d = vm_dir(self.run_dir, name)
                pid = vm_pid(d)
                if pid is not None:
                    await kill_and_wait(pid)
                if d.exists():
                    self._clean_dir(d, name)
            self._gone.pop(name, None)

    async def status(self, name: str) -> VMInfo:
        vm = self._vms.get(name)
        if vm is not None:
            self._check_alive(vm)
        return known_vm(name, self._vms, self._gone)

    async def list(self) -> builtins.list[VMInfo]:
        for vm in list(self._vms.values()):
            self._check_alive(vm)
        return known_vms(self._vms, self._gone)

    async def attach(self) -> builtins.list[VMInfo]:
        attached = []
        for d in sorted(vms_root(self.run_dir).iterdir()):
            name = d.name
            if not d.is_dir() or name in self._vms:
                continue
            async with self._lock(name):
                vm = await self._attach_one(d)
            if vm is not None:
                attached.append(vm.info())
        return attached

    async def usage(self, name: str) -> Usage:
        vm = self._get(name)
        sample = process_cpu_and_rss(vm.pid)
        if sample is None:
            raise NotRunning(name, "its process is gone")
        cpu, rss, age = sample
        now = time.monotonic()
        if vm.cpu_sample is None or now - vm.cpu_sample[0] < 0.05:
            percent = 100.0 * cpu / age
        else:
            percent = 100.0 * (cpu - vm.cpu_sample[1]) / (now - vm.cpu_sample[0])
        vm.cpu_sample = (now, cpu)
        return Usage(cpu_percent=max(percent, 0.0), memory_mib=rss)

    async def pause(self, name: str) -> VMInfo:
        vm = self._get(name)
        await self._qmp(vm).execute("stop")
        self._set_state(vm, VMState.PAUSED, "paused on request")
        return vm.info()

    async def resume(self, name: str) -> VMInfo:
        vm = self._get(name)
        if vm.exports:  # a shared-nothing target: stop serving its disks first
            await blockjobs.close_exports(self._qmp(vm))
            vm.exports = False
        # Still receiving its state: QEMU runs it the moment that is loaded ("cont" while
        # in-migrate); return then, when QEMU says RESUME.
        monitor, resumed = self._qmp(vm), asyncio.Event()
        with monitor.subscribe(lambda event, _: resumed.set() if event == "RESUME" else None):
            await monitor.execute("cont")
            if vm.state == VMState.MIGRATING:
                await self._until_resumed(vm, resumed)
        self._set_state(vm, VMState.RUNNING, "resumed on request")
        return vm.info()

    async def _until_resumed(self, vm: QemuVM, resumed: asyncio.Event) -> None:
        deadline = time.monotonic() + MigrationSettings().timeout_s
        while not resumed.is_set():
            if vm.exited.is_set():
                raise QemuFailed(f"vm {vm.name}: QEMU exited before its state was loaded")
            if time.monotonic() > deadline:
                raise QemuFailed(f"vm {vm.name}: its incoming state was not loaded in time")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(resumed.wait(), 0.5)

    # -- migration --------------------------------------------------------------------------

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

    async def save(self, name: str, path: Path) -> MigrationResult:
        vm = self._get(name)
        monitor = self._qmp(vm)
        was_running = vm.state == VMState.RUNNING
        await monitor.execute("stop")
        self._set_state(vm, VMState.MIGRATING, f"saving to {path}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as e:
            await self._after_failed_migration(vm, resume=was_running)
            raise MigrationFailed(f"vm {name}: cannot write saved state to {path}: {e}") from e
        try:
            monitor.send_fd(fd)
            await monitor.execute("getfd", {"fdname": "hvc-save"})
            result = await run_migration(monitor, "fd:hvc-save", MigrationSettings(), None)
            os.fsync(fd)
        except DriverError as e:
            await self._after_failed_migration(vm, resume=was_running)
            raise MigrationFailed(f"vm {name}: saving to {path} failed: {e}") from e
        finally:
            os.close(fd)
        self._set_state(vm, VMState.PAUSED, f"saved to {path}")
        return result

    async def restore(self, spec: VMSpec, epoch: int, path: Path, paused: bool = False) -> VMInfo:
        path = saved_state(path)
        async with self._lock(spec.name):
            vm = await self._launch(spec, epoch, paused=True, incoming=True)
            try:
                monitor = self._qmp(vm)
                await configure(monitor, MigrationSettings())
                await monitor.execute(
                    "migrate-incoming", {"uri": f"exec:cat {shlex.quote(str(path))}"}
                )
                await self._wait_incoming(vm, MigrationSettings().timeout_s)
                if not paused:
                    await monitor.execute("cont")
                    self._set_state(vm, VMState.RUNNING, f"restored from {path}")
            except DriverError as e:
                await self._destroy(vm)
                self._gone.pop(spec.name, None)
                raise MigrationFailed(f"vm {spec.name}: restore from {path} failed: {e}") from e
            return vm.info()

    async def close(self) -> None:
        for task in self._followers.values():
            task.cancel()
        for task in self._followers.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._followers.clear()
        for vm in self._vms.values():
            if vm.monitor is not None:
                await vm.monitor.close()
                vm.monitor = None
        self._vms.clear()

    # -- inside -----------------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _get(self, name: str) -> QemuVM:
        vm = self._vms.get(name)
        if vm is None:
            raise NotRunning(name)
        return vm

    def _qmp(self, vm: QemuVM) -> Monitor:
        if vm.monitor is None or not vm.monitor.connected:
            raise NotRunning(vm.name, "no QMP connection to its QEMU")
        return vm.monitor

    async def _launch(self, spec: VMSpec, epoch: int, paused: bool, incoming: bool) -> QemuVM:
        name = spec.name
        d = vm_dir(self.run_dir, name)
        if name in self._vms or vm_pid(d) is not None:
            raise AlreadyRunning(name, self._vms[name].pid if name in self._vms else vm_pid(d))
        check_spec(spec, host_memory_mib(), self.settings)
        accel, _ = await self.accelerator()
        if d.exists():
            self._clean_dir(d, name)
        d.mkdir(parents=True)
        started = time.time()
        record = {"spec": spec.model_dump(mode="json"), "epoch": epoch, "started": started}
        write_json(d / "spec.json", record | {"accelerator": accel, "incoming": incoming})
        argv = qemu_argv(spec, d, self.run_dir, Launch(accel, paused, incoming), self.settings)
        try:
            pid = await launch(argv, d, self.settings.start_timeout_s)
        except DriverError:
            self._clean_dir(d, name)
            raise
        state = VMState.MIGRATING if incoming else VMState.PAUSED if paused else VMState.RUNNING
        vm = QemuVM(name, d, spec, epoch, pid, record_identity(d, pid), VMState.STARTING, started)
        self._vms[name] = vm
        self._gone.pop(name, None)
        try:
            for i, nic in enumerate(spec.nics):
                await enslave_tap(tap_name(self.run_dir, name, i), bridge_name(nic.switch))
            await self._connect(vm)
        except DriverError:
            await self._destroy(vm)
            self._gone.pop(name, None)
            raise
        self._set_state(vm, state, "incoming migration" if incoming else "started")
        return vm

    async def _attach_one(self, d: Path) -> QemuVM | None:
        name = d.name
        record = read_json(d / "spec.json")
        pid = vm_pid(d)
        try:
            spec = VMSpec.model_validate(record["spec"]) if record else None
        except ValueError:
            spec = None
        if pid is None or spec is None or record is None:
            if pid is not None:  # a VM we cannot account for must not run unsupervised
                await kill_and_wait(pid)
            why = "its runtime dir is unreadable" if pid else "QEMU exited while no agent watched"
            self._clean_dir(d, name)
            self._record_gone(
                name, VMState.FAILED, why, int(record.get("epoch", 0)) if record else 0
            )
            return None
        saved = read_json(d / "state.json") or {}
        vm = QemuVM(
            name,
            d,
            spec,
            int(record["epoch"]),
            pid,
            read_int(d / "pid.start"),
            VMState(saved.get("state", VMState.RUNNING)),
            float(saved.get("since", record.get("started", time.time()))),
            reason=str(saved.get("reason", "")),
        )
        self._vms[name] = vm
        try:
            await self._connect(vm)
            await self._refresh(vm)
        except DriverError as e:
            log.warning("vm %s: attached to pid %s without QMP: %s", name, pid, e)
            vm.reason = str(e)
        return vm

    async def _connect(self, vm: QemuVM) -> None:
        def on_event(event: str, data: dict[str, Any]) -> None:
            self._on_event(vm, event, data)

        vm.monitor = await Monitor.connect(
            vm.name, vm.dir / "qmp.sock", on_event, self.settings.qmp_timeout_s
        )
        self._followers[vm.name] = asyncio.create_task(self._follow(vm, vm.monitor))

    async def _follow(self, vm: QemuVM, monitor: Monitor) -> None:
        """QEMU hung up its QMP socket: it is exiting. Wait for the process, then account."""
        await monitor.closed
        await monitor.close()
        if await wait_gone(vm.pid, vm.start, 5.0):
            self._finish(vm)
        else:
            log.warning("vm %s: QMP hung up but QEMU (pid %s) still runs", vm.name, vm.pid)
        if self._followers.get(vm.name) is asyncio.current_task():
            del self._followers[vm.name]

    def _on_event(self, vm: QemuVM, event: str, data: dict[str, Any]) -> None:
        if event == "STOP" and vm.state != VMState.MIGRATING:
            self._set_state(vm, VMState.PAUSED, "stopped")
        elif event == "RESUME":
            self._set_state(vm, VMState.RUNNING, "resumed")
        elif event == "SHUTDOWN":
            vm.guest_off = vm.guest_off or bool(data.get("guest"))
            self._set_state(vm, VMState.STOPPING, f"shutdown ({data.get('reason', '?')})")
        elif event == "MIGRATION":
            status = str(data.get("status", ""))
            if status in ACTIVE:
                self._set_state(vm, VMState.MIGRATING, f"migration {status}")
            elif status == "completed" and vm.state != VMState.RUNNING:  # (resumed already)
                self._set_state(vm, VMState.PAUSED, "migration completed")

    async def _refresh(self, vm: QemuVM) -> None:
        status = await self._qmp(vm).execute("query-status")
        state = RUNSTATES.get(str(status.get("status")), VMState.PAUSED)
        self._set_state(vm, state, f"QEMU run state {status.get('status')}")

    async def _after_failed_migration(self, vm: QemuVM, resume: bool = False) -> None:
        """QEMU resumes a source whose migration failed; make our state say what it is."""
        with contextlib.suppress(DriverError):
            if resume:
                await self._qmp(vm).execute("cont")
            await self._refresh(vm)

    async def _wait_incoming(self, vm: QemuVM, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if vm.exited.is_set():
                raise QemuFailed(f"QEMU exited: {vm.reason}")
            status = await self._qmp(vm).execute("query-status")
            if status.get("status") != "inmigrate":
                self._set_state(vm, VMState.PAUSED, "incoming state loaded")
                return
            if time.monotonic() > deadline:
                raise QemuFailed(f"incoming state not loaded in {timeout}s")
            await asyncio.sleep(0.05)

    async def _wait_exit(self, vm: QemuVM, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not vm.exited.is_set():
            self._check_alive(vm, grace=0.5)
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _destroy(self, vm: QemuVM) -> None:
        vm.stopping = True
        await kill_and_wait(vm.pid, vm.start)
        await self._wait_exit(vm, 5.0)

    def _check_alive(self, vm: QemuVM, grace: float = 2.0) -> None:
        """Polling backs up the QMP hang-up: a process gone for ``grace`` seconds is gone."""
        if vm.exited.is_set() or pid_alive(vm.pid, vm.start):
            return
        if vm.dead_since is None:
            vm.dead_since = time.monotonic()
        elif vm.monitor is None or time.monotonic() - vm.dead_since > grace:
            self._finish(vm)

    def _finish(self, vm: QemuVM) -> None:
        if vm.exited.is_set():
            return
        if vm.stopping:
            state, reason = VMState.STOPPED, "stopped on request"
        elif vm.guest_off:
            state, reason = VMState.STOPPED, "the guest powered off"
        else:
            tail = log_tail(vm.dir / "qemu.log", 300)
            state = VMState.FAILED
            reason = "QEMU exited unexpectedly (killed or crashed)" + (f": {tail}" if tail else "")
        self._clean_dir(vm.dir, vm.name)
        if self._vms.get(vm.name) is vm:
            del self._vms[vm.name]
        self._record_gone(vm.name, state, reason, vm.epoch)
        vm.state, vm.reason, vm.since = state, reason, time.time()
        vm.exited.set()

    def _record_gone(self, name: str, state: VMState, reason: str, epoch: int) -> None:
        now = time.time()
        self._gone[name] = VMInfo(name=name, state=state, since=now, epoch=epoch, reason=reason)
        self._emit(VMEvent(name=name, state=state, at=now, epoch=epoch, reason=reason))

    def _set_state(self, vm: QemuVM, state: VMState, reason: str) -> None:
        if state == vm.state or vm.exited.is_set():
            return
        vm.state, vm.since, vm.reason = state, time.time(), reason
        with contextlib.suppress(OSError):
            write_json(vm.dir / "state.json", {"state": state, "since": vm.since, "reason": reason})
        self._emit(VMEvent(name=vm.name, state=state, at=vm.since, epoch=vm.epoch, reason=reason))

    def _clean_dir(self, d: Path, name: str) -> None:
        retire(self.run_dir, name, keep=("serial.log", "qemu.log"))
