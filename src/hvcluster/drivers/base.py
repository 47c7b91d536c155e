"""The driver contract: everything the cluster asks of a hypervisor on one host.

A driver runs the VMs of *one* host. The node agent is its only caller; nothing above the
driver knows whether VMs are QEMU processes or simulated ones. Rules every driver keeps:

- Only :class:`~hvcluster.models.errors.DriverError` subclasses (see
  :mod:`hvcluster.drivers.errors`) leave a driver method; anything else is a bug.
- VMs outlive the driver instance (and the agent process): :meth:`Driver.close` lets go of
  them without stopping them, and a new instance finds them again with :meth:`Driver.attach`.
- Each running VM has a runtime dir ``<run_dir>/vms/<name>/`` (see
  :mod:`hvcluster.drivers.runtime`) whose ``pid`` file the node watchdog may SIGKILL at any
  time; the driver then reports the VM ``failed`` (crashed), never silently restarts it.
- ``epoch`` is the placement's fencing token the VM was started for; the driver records it and
  reports it back, it does not judge it.

Live migration, as the agents run it (target T, source S)::

    address = await T.prepare_incoming(spec, epoch + 1, host)   # QEMU paused, -incoming
    result = await S.migrate_out(name, address, settings, on_progress)
    # the controller flips the placement, then:
    await T.resume(name); await S.discard(name)
    # any failure before the flip: await T.discard(name) and S keeps running

Quick migration is :meth:`Driver.save` on the source and :meth:`Driver.restore` on the target.
"""

from __future__ import annotations

import asyncio
import builtins
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Protocol

from pydantic import Field

from hvcluster.drivers.errors import NotRunning
from hvcluster.models.base import Model
from hvcluster.models.config import MigrationSettings
from hvcluster.models.lifecycle import VMState
from hvcluster.models.migration import Progress
from hvcluster.models.node import Capacity, Inventory
from hvcluster.models.vm import VMSpec


class HostFacts(Model):
    """What a driver found on its host: capacity for placement, inventory for validation."""

    capacity: Capacity
    inventory: Inventory


class VMInfo(Model):
    """One VM this host runs (or ran until just now)."""

    name: str
    state: VMState
    pid: int | None = None
    since: float = 0.0  # wall clock of the last state change
    epoch: int = 0
    reason: str = ""  # why it is in this state, when that says something (a crash, a failure)


class VMEvent(Model):
    """A state change the driver noticed, e.g. a VM that crashed or powered itself off."""

    name: str
    state: VMState
    at: float
    epoch: int = 0
    reason: str = ""


class Usage(Model):
    """Resource use of a running VM, for balancing and display."""

    cpu_percent: float = Field(default=0.0, ge=0)  # of one host CPU; 200 = two CPUs busy
    memory_mib: float = Field(default=0.0, ge=0)


class MigrationResult(Model):
    """How a migration (live, or to/from a file) went, in QEMU's own measure."""

    total_ms: float
    downtime_ms: float
    setup_ms: float = 0.0
    progress: Progress = Progress()


ProgressCallback = Callable[[Progress], None]


class Driver(ABC):
    """The hypervisor of one host. See the module docstring for the rules."""

    kind: str = "abstract"

    def __init__(self, run_dir: Path | None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._events: asyncio.Queue[VMEvent] = asyncio.Queue(maxsize=10_000)

    # -- host -------------------------------------------------------------------------------

    @abstractmethod
    async def inventory(self) -> HostFacts:
        """CPUs and memory of the host, CPU model and flags, accelerator, hypervisor version."""

    @abstractmethod
    def set_volumes(self, mounts: Mapping[str, Path]) -> None:
        """Where this host mounts each shared volume it sees, checked (the agent keeps this
        current). A disk on a volume resolves to ``<mount>/<disk.path>``; a disk on a volume
        not listed is refused as not mounted here."""

    # -- lifecycle --------------------------------------------------------------------------

    @abstractmethod
    async def start(self, spec: VMSpec, epoch: int, paused: bool = False) -> VMInfo:
        """Start ``spec`` as placement ``epoch``; return once the VM runs (or is paused).

        Raises :class:`SpecError` naming the field when the spec cannot run here,
        :class:`AlreadyRunning` when a VM of that name runs already."""

    @abstractmethod
    async def shutdown(self, name: str, timeout: float) -> VMInfo:
        """Ask the guest to power off (ACPI); after ``timeout`` seconds, force it off."""

    @abstractmethod
    async def kill(self, name: str) -> VMInfo:
        """Stop the VM at once (SIGKILL of its process), whatever its state."""

    @abstractmethod
    async def status(self, name: str) -> VMInfo:
        """The state of one VM; raises :class:`NotRunning` if this host does not know it."""

    @abstractmethod
    async def list(self) -> builtins.list[VMInfo]:
        """Every VM this host runs, with pid, state and since. Polling it notices crashes."""

    @abstractmethod
    async def attach(self) -> builtins.list[VMInfo]:
        """Find every VM still running from the runtime dirs (after an agent restart) and take
        it over; clean the dirs of VMs that are gone. Returns the VMs attached."""

    async def usage(self, name: str) -> Usage:
        """CPU and memory use of a running VM."""
        await self.status(name)
        return Usage()

    async def events(self) -> AsyncIterator[VMEvent]:
        """State changes as they happen (crash, guest power-off, migration done). One consumer;
        the iterator never ends on its own."""
        while True:
            yield await self._events.get()

    # -- migration --------------------------------------------------------------------------

    @abstractmethod
    async def prepare_incoming(
        self, spec: VMSpec, epoch: int, host: str, settings: MigrationSettings | None = None
    ) -> str:
        """Start ``spec`` paused, waiting for an incoming migration on a free port of ``host``;
        return the address the source must send to."""

    @abstractmethod
    async def migrate_out(
        self,
        name: str,
        address: str,
        settings: MigrationSettings,
        on_progress: ProgressCallback | None = None,
    ) -> MigrationResult:
        """Live-migrate a running VM to ``address``. On success the source is left paused (the
        caller discards it after the placement flip); on failure it keeps running and
        :class:`MigrationFailed` is raised."""

    @abstractmethod
    async def cancel_migration(self, name: str) -> None:
        """Cancel an outgoing migration of ``name``; the VM keeps running here."""

    @abstractmethod
    async def resume(self, name: str) -> VMInfo:
        """Run a paused VM (the migration target after the placement flip, or a paused VM)."""

    @abstractmethod
    async def pause(self, name: str) -> VMInfo:
        """Pause a running VM (its vCPUs stop; memory and devices stay)."""

    @abstractmethod
    async def discard(self, name: str) -> None:
        """Drop a VM without a shutdown: a failed migration's target, or the source after a
        completed migration. Never fails when the VM is already gone."""

    @abstractmethod
    async def save(self, name: str, path: Path) -> MigrationResult:
        """Quick migration, out: pause the VM and write its state to ``path``. The VM stays
        paused here; the caller discards (or resumes) it."""

    @abstractmethod
    async def restore(self, spec: VMSpec, epoch: int, path: Path, paused: bool = False) -> VMInfo:
        """Quick migration, in: start ``spec`` from the state saved in ``path``."""

    # -- the driver itself ------------------------------------------------------------------

    @abstractmethod
    async def close(self) -> None:
        """Let go of every VM (they keep running) and of the driver's own resources."""

    def _emit(self, event: VMEvent) -> None:
        """Queue a state change for :meth:`events`; the oldest is dropped if nobody listens."""
        if self._events.full():
            self._events.get_nowait()
        self._events.put_nowait(event)


class HasInfo(Protocol):
    def info(self) -> VMInfo: ...


def known_vm(name: str, running: Mapping[str, HasInfo], gone: Mapping[str, VMInfo]) -> VMInfo:
    """The state of ``name`` from a driver's books: a VM it runs, else one that stopped or
    crashed here and was not started again or discarded; else :class:`NotRunning`."""
    if name in running:
        return running[name].info()
    if name in gone:
        return gone[name]
    raise NotRunning(name)


def known_vms(running: Mapping[str, HasInfo], gone: Mapping[str, VMInfo]) -> list[VMInfo]:
    """Every VM in a driver's books, running or gone, by name."""
    infos = [vm.info() for vm in running.values()]
    infos += [info for name, info in gone.items() if name not in running]
    return sorted(infos, key=lambda i: i.name)
