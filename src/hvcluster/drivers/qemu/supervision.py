"""The qemu driver's hold on its QEMU processes: launching one, re-attaching to one a previous
agent left running, following it over QMP (its events make the VM's state; its hang-up
means it is exiting), and accounting for its exit.

:class:`QemuSupervisor` is a collaborator of :class:`~hvcluster.drivers.qemu.driver.QemuDriver`
and of its parts (live migration, save/restore, block jobs), which all work on the VMs it
keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hvcluster.drivers.base import VMEvent, VMInfo
from hvcluster.drivers.errors import AlreadyRunning, NotRunning
from hvcluster.drivers.qemu import heartbeat
from hvcluster.drivers.qemu.cmdline import Launch, check_spec, qemu_argv, tap_name
from hvcluster.drivers.qemu.host import host_memory_mib
from hvcluster.drivers.qemu.migration import ACTIVE, POSTCOPY
from hvcluster.drivers.qemu.monitor import Monitor
from hvcluster.drivers.qemu.probe import decide_accelerator
from hvcluster.drivers.qemu.process import enslave_tap, kill_and_wait, launch, log_tail, wait_gone
from hvcluster.drivers.qemu.scope import scoped, systemd_run
from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.drivers.qemu.vm import RUNSTATES, QemuVM
from hvcluster.drivers.runtime import (
    pid_alive,
    read_int,
    read_json,
    record_identity,
    retire,
    vm_dir,
    vm_pid,
    vms_root,
    write_json,
)
from hvcluster.models.errors import DriverError
from hvcluster.models.lifecycle import VMState
from hvcluster.models.storage import bridge_name
from hvcluster.models.vm import VMSpec

log = logging.getLogger(__name__)

Emit = Callable[[VMEvent], None]


class QemuSupervisor:
    """The QEMU processes of one host: the qemu driver's books (:class:`Books`), shared with
    its migration and disk parts."""

    def __init__(self, run_dir: Path, settings: QemuSettings, emit: Emit) -> None:
        self.run_dir: Path = Path(run_dir).absolute()
        self.settings = settings
        self.emit = emit
        self.running: dict[str, QemuVM] = {}  # by VM name
        self.gone: dict[str, VMInfo] = {}  # stopped or crashed here, not started again since
        self._locks: dict[str, asyncio.Lock] = {}
        self.followers: dict[str, asyncio.Task[None]] = {}
        self.watchers: dict[str, asyncio.Task[None]] = {}  # heartbeats (and guest failures)
        self._accel: tuple[str, str] | None = None
        self.systemd_run = systemd_run(settings.scope)  # None: QEMU starts from the agent
        vms_root(self.run_dir).mkdir(parents=True, exist_ok=True)

    async def accelerator(self) -> tuple[str, str]:
        """``(kvm|tcg, why)``, decided once per driver (the probe itself is cached per host)."""
        if self._accel is None:
            self._accel = await decide_accelerator(self.settings)
        return self._accel

    def look(self, name: str | None = None) -> None:
        """Notice VMs whose process is gone (polling backs up the QMP hang-up)."""
        names = [*self.running] if name is None else [name]
        for vm in [self.running[n] for n in names if n in self.running]:
            self.check_alive(vm)

    async def discard(self, name: str) -> None:
        """Drop ``name`` without a shutdown; also a QEMU of a runtime dir not taken over."""
        async with self.lock(name):
            vm = self.running.get(name)
            if vm is not None:
                await self.destroy(vm)
            else:
                d = vm_dir(self.run_dir, name)
                pid = vm_pid(d)
                if pid is not None:
                    await kill_and_wait(pid)
                if d.exists():
                    self.clean_dir(d, name)
            self.gone.pop(name, None)

    async def close(self) -> None:
        """Stop following every QEMU and hang up on it (they keep running)."""
        tasks = [*self.followers.values(), *self.watchers.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.followers.clear()
        self.watchers.clear()
        for vm in self.running.values():
            if vm.monitor is not None:
                await vm.monitor.close()
                vm.monitor = None
        self.running.clear()

    def lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def get(self, name: str) -> QemuVM:
        vm = self.running.get(name)
        if vm is None:
            raise NotRunning(name)
        return vm

    def qmp(self, vm: QemuVM) -> Monitor:
        if vm.monitor is None or not vm.monitor.connected:
            raise NotRunning(vm.name, "no QMP connection to its QEMU")
        return vm.monitor

    async def launch(self, spec: VMSpec, epoch: int, paused: bool, incoming: bool) -> QemuVM:
        name = spec.name
        d = vm_dir(self.run_dir, name)
        running = self.running.get(name)
        if running is not None or vm_pid(d) is not None:
            raise AlreadyRunning(name, running.pid if running is not None else vm_pid(d))
        check_spec(spec, host_memory_mib(), self.settings)
        accel, _ = await self.accelerator()
        if d.exists():
            self.clean_dir(d, name)
        d.mkdir(parents=True)
        started = time.time()
        record = {"spec": spec.model_dump(mode="json"), "epoch": epoch, "started": started}
        write_json(d / "spec.json", record | {"accelerator": accel, "incoming": incoming})
        argv = qemu_argv(spec, d, self.run_dir, Launch(accel, paused, incoming), self.settings)
        if self.systemd_run is not None:
            argv = scoped(argv, name, self.systemd_run)
        try:
            pid = await launch(argv, d, self.settings.start_timeout_s)
        except DriverError:
            self.clean_dir(d, name)
            raise
        state = VMState.MIGRATING if incoming else VMState.PAUSED if paused else VMState.RUNNING
        vm = QemuVM(name, d, spec, epoch, pid, record_identity(d, pid), VMState.STARTING, started)
        self.running[name] = vm
        self.gone.pop(name, None)
        try:
            for i, nic in enumerate(spec.nics):
                await enslave_tap(tap_name(self.run_dir, name, i), bridge_name(nic.switch))
            await self._connect(vm)
        except DriverError:
            await self.destroy(vm)
            self.gone.pop(name, None)
            raise
        self.set_state(vm, state, "incoming migration" if incoming else "started")
        return vm

    async def attach_one(self, d: Path) -> QemuVM | None:
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
            self.clean_dir(d, name)
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
        self.running[name] = vm
        try:
            await self._connect(vm)
            await self.refresh(vm)
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
        self.followers[vm.name] = asyncio.create_task(self._follow(vm, vm.monitor))
        if vm.spec.monitor.heartbeat:
            beat = heartbeat.watch(
                vm.name,
                vm.dir / heartbeat.AGENT_SOCKET,
                vm.spec.monitor,
                lambda: vm.state,
                vm.exited,
                lambda why: self.fail_guest(vm, why),
            )
            self.watchers[vm.name] = asyncio.create_task(beat)

    def fail_guest(self, vm: QemuVM, reason: str) -> None:
        """The guest OS failed (it panicked, or stopped answering its heartbeat) while its
        QEMU runs on: kill QEMU and report the VM failed with ``reason``, as a crash (the
        agent restarts it, then the controller moves it: the same threshold)."""
        if vm.failure or vm.stopping or vm.exited.is_set():
            return
        vm.failure = reason
        log.warning("vm %s: %s: killing its QEMU (pid %s)", vm.name, reason, vm.pid)

        async def kill() -> None:
            await kill_and_wait(vm.pid, vm.start)
            await self.wait_exit(vm, 5.0)

        task = asyncio.get_running_loop().create_task(kill())
        self.watchers[f"{vm.name}/kill"] = task
        task.add_done_callback(lambda _: self.watchers.pop(f"{vm.name}/kill", None))

    async def _follow(self, vm: QemuVM, monitor: Monitor) -> None:
        """QEMU hung up its QMP socket: it is exiting. Wait for the process, then account."""
        await monitor.closed
        await monitor.close()
        if await wait_gone(vm.pid, vm.start, 5.0):
            self._finish(vm)
        else:
            log.warning("vm %s: QMP hung up but QEMU (pid %s) still runs", vm.name, vm.pid)
        if self.followers.get(vm.name) is asyncio.current_task():
            del self.followers[vm.name]

    def _on_event(self, vm: QemuVM, event: str, data: dict[str, Any]) -> None:
        if event in ("STOP", "RESUME") and vm.checkpointing:
            return  # a snapshot job's own pause: the job's end refreshes the state
        if event == "STOP" and vm.state != VMState.MIGRATING:
            self.set_state(vm, VMState.PAUSED, "stopped")
        elif event == "RESUME":
            self.set_state(vm, VMState.RUNNING, "resumed")
        elif event == "SHUTDOWN":
            vm.guest_off = vm.guest_off or bool(data.get("guest"))
            self.set_state(vm, VMState.STOPPING, f"shutdown ({data.get('reason', '?')})")
        elif event == "GUEST_PANICKED":
            self.fail_guest(vm, "guest panicked (pvpanic)")
        elif event == "MIGRATION":
            status = str(data.get("status", ""))
            if status in POSTCOPY:
                vm.postcopy = True
            elif status in ("setup", "completed"):  # a new migration; or this one is done
                vm.postcopy = False
            elif vm.postcopy and status not in ACTIVE:
                # Its memory is split between two hosts: neither end may run it again.
                self.fail_guest(vm, f"its migration failed in postcopy ({status})")
            if status in ACTIVE:
                self.set_state(vm, VMState.MIGRATING, f"migration {status}")
            elif status == "completed" and vm.state != VMState.RUNNING:  # (resumed already)
                self.set_state(vm, VMState.PAUSED, "migration completed")

    async def refresh(self, vm: QemuVM) -> None:
        status = await self.qmp(vm).execute("query-status")
        state = RUNSTATES.get(str(status.get("status")), VMState.PAUSED)
        if status.get("status") == "guest-panicked":  # while no agent watched
            self.fail_guest(vm, "guest panicked (pvpanic)")
        self.set_state(vm, state, f"QEMU run state {status.get('status')}")

    async def after_failed_migration(self, vm: QemuVM, resume: bool = False) -> None:
        """QEMU resumes a source whose migration failed; make our state say what it is."""
        with contextlib.suppress(DriverError):
            if resume:
                await self.qmp(vm).execute("cont")
            await self.refresh(vm)

    async def wait_exit(self, vm: QemuVM, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not vm.exited.is_set():
            self.check_alive(vm, grace=0.5)
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def destroy(self, vm: QemuVM) -> None:
        vm.stopping = True
        await kill_and_wait(vm.pid, vm.start)
        await self.wait_exit(vm, 5.0)

    def check_alive(self, vm: QemuVM, grace: float = 2.0) -> None:
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
        if vm.failure:
            state, reason = VMState.FAILED, vm.failure
        elif vm.stopping:
            state, reason = VMState.STOPPED, "stopped on request"
        elif vm.guest_off:
            state, reason = VMState.STOPPED, "the guest powered off"
        else:
            tail = log_tail(vm.dir / "qemu.log", 300)
            state = VMState.FAILED
            reason = "QEMU exited unexpectedly (killed or crashed)" + (f": {tail}" if tail else "")
        self.clean_dir(vm.dir, vm.name)
        if self.running.get(vm.name) is vm:
            del self.running[vm.name]
        self._record_gone(vm.name, state, reason, vm.epoch)
        vm.state, vm.reason, vm.since = state, reason, time.time()
        vm.exited.set()

    def _record_gone(self, name: str, state: VMState, reason: str, epoch: int) -> None:
        now = time.time()
        self.gone[name] = VMInfo(name=name, state=state, since=now, epoch=epoch, reason=reason)
        self.emit(VMEvent(name=name, state=state, at=now, epoch=epoch, reason=reason))

    def set_state(self, vm: QemuVM, state: VMState, reason: str) -> None:
        if state == vm.state or vm.exited.is_set():
            return
        vm.state, vm.since, vm.reason = state, time.time(), reason
        with contextlib.suppress(OSError):
            write_json(vm.dir / "state.json", {"state": state, "since": vm.since, "reason": reason})
        self.emit(VMEvent(name=vm.name, state=state, at=vm.since, epoch=vm.epoch, reason=reason))

    def clean_dir(self, d: Path, name: str) -> None:
        retire(self.run_dir, name, keep=("serial.log", "qemu.log"))
