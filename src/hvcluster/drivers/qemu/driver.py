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
import time
from collections.abc import Mapping
from pathlib import Path

from hvcluster.drivers.base import Driver, HostFacts, Usage, VMInfo
from hvcluster.drivers.errors import NotRunning, QemuFailed
from hvcluster.drivers.qemu import blockjobs
from hvcluster.drivers.qemu.checkpoints import QemuCheckpoints
from hvcluster.drivers.qemu.guestcpu import cpu_models
from hvcluster.drivers.qemu.host import (
    HostCpu,
    cpu_model_and_flags,
    host_cpus,
    host_memory_mib,
    qemu_version,
)
from hvcluster.drivers.qemu.live import QemuLive
from hvcluster.drivers.qemu.monitor import Monitor
from hvcluster.drivers.qemu.process import kill_and_wait
from hvcluster.drivers.qemu.saved import QemuSaver
from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.drivers.qemu.storage import QemuDisks
from hvcluster.drivers.qemu.supervision import QemuSupervisor
from hvcluster.drivers.qemu.vm import QemuVM
from hvcluster.drivers.runtime import process_cpu_and_rss, vms_root
from hvcluster.models.config import MigrationSettings
from hvcluster.models.lifecycle import VMState
from hvcluster.models.node import Capacity, Inventory
from hvcluster.models.vm import VMSpec

log = logging.getLogger(__name__)

# A graceful shutdown presses the power button again after this long without a power-off.
PRESS_AGAIN_S = 10.0
SWITCH_LOCK_S = 5.0  # an incoming target's cont is retried this long on a disk lock


class QemuDriver(Driver):
    kind = "qemu"

    def __init__(self, run_dir: Path, settings: QemuSettings | None = None) -> None:
        super().__init__(run_dir)
        self.vms = QemuSupervisor(Path(run_dir), settings or QemuSettings(), self._emit)
        self.run_dir: Path = self.vms.run_dir
        self.books = self.vms
        live = QemuLive(self.vms)
        self.migrator, self.saver, self.disks = live, QemuSaver(self.vms), QemuDisks(self.vms, live)
        self.checkpointer = QemuCheckpoints(self.vms)
        self.host_cpu: HostCpu | None = None  # /proc/stat, read from the first call on

    @property
    def settings(self) -> QemuSettings:
        return self.vms.settings

    async def accelerator(self) -> tuple[str, str]:
        """``(kvm|tcg, why)``, decided once per driver (the probe itself is cached per host)."""
        return await self.vms.accelerator()

    def set_volumes(self, mounts: Mapping[str, Path]) -> None:
        self.vms.settings = self.settings.model_copy(update={"volumes": dict(mounts)})

    async def inventory(self) -> HostFacts:
        accel, _ = await self.vms.accelerator()
        model, flags = cpu_model_and_flags()
        return HostFacts(
            capacity=Capacity(cpus=host_cpus(), memory_mib=host_memory_mib()),
            inventory=Inventory(
                host_cpu=model,
                cpu_flags=flags,
                accelerator=accel,
                qemu_version=qemu_version(self.settings.binary),
                driver=self.kind,
            ),
        )

    async def guest_cpus(self, inv: Inventory) -> Inventory:
        """Its ``-cpu`` default, and the models QEMU can provide under the node's accelerator
        (QEMU is asked once per binary and accelerator in this process)."""
        binary, model = self.settings.binary, self.settings.cpu_model
        known = await asyncio.to_thread(cpu_models, binary, inv.accelerator)
        update = {
            "guest_cpu_model": model,
            "guest_cpu_problem": known.problem(binary, model, inv.accelerator),
            "guest_cpu_models": known.provided,
        }
        return inv.model_copy(update=update)

    async def start(self, spec: VMSpec, epoch: int, paused: bool = False) -> VMInfo:
        async with self.vms.lock(spec.name):
            vm = await self.vms.launch(spec, epoch, paused=paused, incoming=False)
            return vm.info()

    async def shutdown(self, name: str, timeout: float) -> VMInfo:
        """Press the ACPI power button, again every :data:`PRESS_AGAIN_S` (a guest still
        booting has no one listening yet: systemd-logind opens the button's input device
        late in the boot, and a press before is lost); forced off after ``timeout``."""
        async with self.vms.lock(name):
            vm = self.vms.get(name)
            vm.stopping = True
            deadline = time.monotonic() + timeout
            while True:
                if vm.monitor is not None:
                    with contextlib.suppress(QemuFailed):
                        await vm.monitor.execute("system_powerdown")
                left = max(0.0, deadline - time.monotonic())
                off = await self.vms.wait_exit(vm, min(left, PRESS_AGAIN_S))
                if off or left <= PRESS_AGAIN_S:
                    break
            if not off:
                log.info("vm %s: no power-off in %ss, forcing it off", name, timeout)
                await kill_and_wait(vm.pid, vm.start)
                await self.vms.wait_exit(vm, 10.0)
            return self.vms.gone[name]

    async def kill(self, name: str) -> VMInfo:
        async with self.vms.lock(name):
            vm = self.vms.get(name)
            await self.vms.destroy(vm)
            return self.vms.gone[name]

    async def attach(self) -> builtins.list[VMInfo]:
        attached = []
        for d in sorted(vms_root(self.run_dir).iterdir()):
            name = d.name
            if not d.is_dir() or name in self.vms.running:
                continue
            async with self.vms.lock(name):
                vm = await self.vms.attach_one(d)
            if vm is not None:
                attached.append(vm.info())
        return attached

    async def host_cpu_cores(self) -> float | None:
        if self.host_cpu is None:
            self.host_cpu = HostCpu()
            return None  # the first read is the baseline
        return self.host_cpu.busy_cores()

    async def usage(self, name: str) -> Usage:
        vm = self.vms.get(name)
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
        vm = self.vms.get(name)
        await self.vms.qmp(vm).execute("stop")
        self.vms.set_state(vm, VMState.PAUSED, "paused on request")
        return vm.info()

    async def resume(self, name: str) -> VMInfo:
        vm = self.vms.get(name)
        if vm.exports:  # a shared-nothing target: stop serving its disks first
            await blockjobs.close_exports(self.vms.qmp(vm))
            vm.exports = False
        # Still receiving its state: QEMU runs it the moment that is loaded ("cont" while
        # in-migrate); return then, when QEMU says RESUME.
        monitor, resumed = self.vms.qmp(vm), asyncio.Event()
        with monitor.subscribe(lambda event, _: resumed.set() if event == "RESUME" else None):
            await self._cont(vm, monitor)
            if vm.state == VMState.MIGRATING:
                await self._until_resumed(vm, resumed)
        self.vms.set_state(vm, VMState.RUNNING, "resumed on request")
        return vm.info()

    async def _cont(self, vm: QemuVM, monitor: Monitor) -> None:
        """``cont``. QEMU 7.2 takes an incoming target's disk write locks at its ``cont``;
        the source lets go of them as it switches (postcopy's start, precopy's end), and the
        target may be asked a moment before: the source says postcopy-active before the
        target has heard of postcopy. While the target is incoming (or in postcopy) a lock
        refusal is retried for :data:`SWITCH_LOCK_S`."""
        deadline = time.monotonic() + SWITCH_LOCK_S
        while True:
            try:
                await monitor.execute("cont")
                return
            except QemuFailed as e:
                incoming = vm.postcopy or vm.state == VMState.MIGRATING
                if not incoming or "lock" not in str(e) or time.monotonic() > deadline:
                    raise
                log.info("vm %s: %s; trying again", vm.name, e)
                await asyncio.sleep(0.05)

    async def _until_resumed(self, vm: QemuVM, resumed: asyncio.Event) -> None:
        deadline = time.monotonic() + MigrationSettings().timeout_s
        while not resumed.is_set():
            if vm.exited.is_set():
                raise QemuFailed(f"vm {vm.name}: QEMU exited before its state was loaded")
            if time.monotonic() > deadline:
                raise QemuFailed(f"vm {vm.name}: its incoming state was not loaded in time")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(resumed.wait(), 0.5)

    async def discard(self, name: str) -> None:
        await self.vms.discard(name)

    async def close(self) -> None:
        await self.vms.close()
