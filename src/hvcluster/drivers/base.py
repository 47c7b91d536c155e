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

Consoles: :meth:`Driver.console` names the unix socket of a running VM's serial or graphical
(VNC) console on this host; the API bridges websockets to it. Never a TCP port.

Storage migration, on one host: ``await D.move_disk(name, index, new_disk, on_progress)`` copies
the disk while the guest runs and switches the guest to the copy; the caller records the new
path and deletes the old file. Shared-nothing migration (the target does not see the disks)::

    sizes = await S.disk_sizes(name)
    incoming = await T.prepare_incoming_with_disks(spec_on_t, epoch + 1, host, sizes)
    result = await S.migrate_out(name, incoming.address, ..., disks_address=incoming.disks_address)
    # the flip, then as above: await T.resume(name) (it closes the disk exports first)
"""

from __future__ import annotations

import asyncio
import builtins
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from pydantic import Field

from hvcluster.drivers.errors import CheckpointFailed, NoConsole, NotRunning
from hvcluster.drivers.parts import (
    Books,
    Checkpointer,
    DiskMove,
    DiskMover,
    Migrator,
    Receive,
    Saver,
    Send,
    known_vm,
    known_vms,
)
from hvcluster.drivers.runtime import vm_dir
from hvcluster.host.network import IpLinks, Links
from hvcluster.models.base import Model
from hvcluster.models.checkpoint import Checkpoint, CheckpointAction, checkpoint_problem
from hvcluster.models.config import MigrationSettings
from hvcluster.models.console import ConsoleKind, console_socket_name
from hvcluster.models.guestcpu import default_guest_cpu
from hvcluster.models.lifecycle import VMState
from hvcluster.models.migration import Progress
from hvcluster.models.node import Capacity, Inventory
from hvcluster.models.vm import Disk, VMSpec


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
    cpu_model: str = ""  # the CPU model its guest was given (spec.cpu_model; "": the default)


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
    completed_at: float = 0.0  # wall clock the driver heard the transfer complete (0: unknown)


class DiskMoveResult(Model):
    """How a storage migration of one disk went (:meth:`Driver.move_disk`)."""

    name: str
    index: int
    old_path: str  # the file the VM used until now: left in place for the caller to delete
    new_path: str  # the file the VM uses now
    bytes_total: int = Field(default=0, ge=0)  # the disk's virtual size
    total_ms: float = 0.0


class IncomingDisks(Model):
    """A shared-nothing migration target: where the memory goes (as for
    :meth:`Driver.prepare_incoming`) and where the disks go (``disks_address``: the driver's
    own form, e.g. ``nbd:127.0.0.1:10809``; each disk is exported as ``disk<index>``)."""

    address: str
    disks_address: str
    paths: tuple[str, ...] = ()  # the disk files created for it, in disk order


ProgressCallback = Callable[[Progress], None]
CompletionHook = Callable[[float], Awaitable[None]]  # migrate_out's on_complete(at)
Confirm = Callable[[], Awaitable[bool]]


class Driver(ABC):
    """The hypervisor of one host. See the module docstring for the rules.

    A driver runs its VMs itself (their lifecycle, below) and keeps them in its ``books``;
    migrations and disk work it hands to collaborators (:mod:`hvcluster.drivers.parts`) its
    constructor sets: ``migrator`` (live migration), ``saver`` (quick migration) and
    ``disks`` (storage and shared-nothing migration). The methods that only hand a request
    to one of them are written here, once."""

    kind: str = "abstract"
    books: Books
    migrator: Migrator
    saver: Saver
    disks: DiskMover
    checkpointer: Checkpointer

    def __init__(self, run_dir: Path | None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._events: asyncio.Queue[VMEvent] = asyncio.Queue(maxsize=10_000)

    # -- host -------------------------------------------------------------------------------

    @abstractmethod
    async def inventory(self) -> HostFacts:
        """CPUs and memory of the host, CPU model and flags, accelerator, hypervisor version."""

    async def guest_cpus(self, inv: Inventory) -> Inventory:
        """``inv`` with the guest CPU models of this host: the one it gives guests whose spec
        names none (``guest_cpu_model``), why it cannot provide that one (``guest_cpu_problem``,
        "" if it can) and every model it can (``guest_cpu_models``). Here: the default of
        :func:`~hvcluster.models.guestcpu.default_guest_cpu`, and the models ``inv`` lists
        (that one alone if none); a driver that can ask its hypervisor says more."""
        model = default_guest_cpu(inv)
        models = inv.guest_cpu_models or (model,)
        update = {"guest_cpu_model": model, "guest_cpu_problem": "", "guest_cpu_models": models}
        return inv.model_copy(update=update)

    def links(self) -> Links:
        """Where the agent makes the bridges of switches for this driver's VM NICs: the
        host's own links (``ip``), unless the driver's VMs live elsewhere."""
        return IpLinks()

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

    async def status(self, name: str) -> VMInfo:
        """The state of one VM; raises :class:`NotRunning` if this host does not know it."""
        return known_vm(self.books, name)

    async def running_spec(self, name: str) -> VMSpec:
        """The spec VM ``name`` runs with here: the one it was started, received or restored
        with. An edit of its stored spec changes none of that until its next cold start, and
        a live or quick move must build its target from this one. Raises
        :class:`NotRunning` if this host does not run it."""
        self.books.look(name)
        if name not in self.books.running:
            raise NotRunning(name)
        return self.books.running[name].spec

    async def list(self) -> builtins.list[VMInfo]:
        """Every VM this host runs, with pid, state and since. Polling it notices crashes."""
        return known_vms(self.books)

    @abstractmethod
    async def attach(self) -> builtins.list[VMInfo]:
        """Find every VM still running from the runtime dirs (after an agent restart) and take
        it over; clean the dirs of VMs that are gone. Returns the VMs attached."""

    async def usage(self, name: str) -> Usage:
        """CPU and memory use of a running VM."""
        await self.status(name)
        return Usage()

    async def host_cpu_cores(self) -> float | None:
        """Busy cores of the whole host since the previous call (every process, not only
        guests), for balancing; None when the driver cannot tell."""
        return None

    async def events(self) -> AsyncIterator[VMEvent]:
        """State changes as they happen (crash, guest power-off, migration done). One consumer;
        the iterator never ends on its own."""
        while True:
            yield await self._events.get()

    async def console(self, name: str, kind: ConsoleKind) -> Path:
        """The unix socket of console ``kind`` of the running VM ``name``: a byte stream to
        the guest's serial port, or QEMU's VNC server (RFB). Only the agent connects to it
        (the API bridges a websocket to it). Raises :class:`NotRunning` if this host does not
        run ``name``, :class:`NoConsole` if it has no such console. Here: the socket
        ``<kind>.sock`` in the VM's runtime dir, if the VM was started with it."""
        self.books.look(name)
        if name not in self.books.running:
            raise NotRunning(name)
        if self.run_dir is None:
            raise NoConsole(f"vm {name!r} has no {kind.value} console: its driver has no run dir")
        path = vm_dir(self.run_dir, name) / console_socket_name(kind)
        if not path.is_socket():
            raise NoConsole(
                f"vm {name!r} has no {kind.value} console: it was started without one "
                "(it gets one at its next start)"
            )
        return path

    # -- migration --------------------------------------------------------------------------

    async def prepare_incoming(
        self, spec: VMSpec, epoch: int, host: str, settings: MigrationSettings | None = None
    ) -> str:
        """Start ``spec`` paused, waiting for an incoming migration on a free port of ``host``;
        return the address the source must send to."""
        return await self.migrator.receive(Receive(spec, epoch, host, settings))

    async def migrate_out(
        self,
        name: str,
        address: str,
        settings: MigrationSettings,
        on_progress: ProgressCallback | None = None,
        on_complete: CompletionHook | None = None,
        disks_address: str = "",
    ) -> MigrationResult:
        """Live-migrate a running VM to ``address``. On success the source is left paused (the
        caller discards it after the placement flip); on failure it keeps running and
        :class:`MigrationFailed` is raised. ``on_complete(at)``, if given, is awaited the
        moment the transfer completes (``at``: the wall clock it was heard; the VM is paused
        here), before the driver collects QEMU's measures: the caller switches over without
        waiting for them. It must not raise.

        With a ``disks_address``, a shared-nothing migration: first copy every disk there
        while the guest runs (mirrors that then follow each write), then migrate memory as
        above (``on_complete`` as there: by then the target's copies hold every write the
        guest saw complete); once the source is paused, the mirrors are finished. On failure
        before the memory moved, the mirrors are stopped, the VM keeps running here and
        :class:`MigrationFailed` is raised."""
        send = Send(address, settings, on_progress, on_complete, disks_address)
        return await (self.disks if disks_address else self.migrator).send(name, send)

    async def cancel_migration(self, name: str) -> None:
        """Cancel an outgoing migration of ``name``; the VM keeps running here."""
        await self.disks.cancel_copy(name)  # a shared-nothing migration's disk copy
        await self.migrator.cancel(name)

    @abstractmethod
    async def resume(self, name: str) -> VMInfo:
        """Run a paused VM (the migration target after the placement flip, or a paused VM).
        An incoming VM still receiving its state may be resumed by a driver that can: it runs
        the moment its state is loaded, and resume returns then; other drivers raise
        :class:`~hvcluster.drivers.errors.NotRunning` until it is loaded."""

    @abstractmethod
    async def pause(self, name: str) -> VMInfo:
        """Pause a running VM (its vCPUs stop; memory and devices stay)."""

    @abstractmethod
    async def discard(self, name: str) -> None:
        """Drop a VM without a shutdown: a failed migration's target, or the source after a
        completed migration. Never fails when the VM is already gone."""

    async def save(self, name: str, path: Path) -> MigrationResult:
        """Quick migration, out: pause the VM and write its state to ``path``. The VM stays
        paused here; the caller discards (or resumes) it."""
        return await self.saver.save(name, path)

    async def restore(self, spec: VMSpec, epoch: int, path: Path, paused: bool = False) -> VMInfo:
        """Quick migration, in: start ``spec`` from the state saved in ``path``."""
        return await self.saver.restore(spec, epoch, path, paused)

    # -- storage migration ------------------------------------------------------------------

    async def move_disk(
        self,
        name: str,
        index: int,
        dest: Disk,
        on_progress: ProgressCallback | None = None,
        timeout_s: float = 3600.0,
        confirm: Confirm | None = None,
    ) -> DiskMoveResult:
        """Move disk ``index`` of the running VM ``name`` to ``dest`` while the guest runs: a
        new image of the same virtual size and format is created at ``dest`` (refused if a
        file is there), the disk is mirrored onto it, and the guest switches to it. The old
        file is left for the caller to delete; the VM's spec here names ``dest`` from then on.

        ``confirm`` is awaited once the copy is complete and every further write reaches both
        files, just before the switch: the caller records the new path there; False (or an
        exception) abandons the move. A host that dies after ``confirm`` leaves a complete
        copy at ``dest``.

        On any failure (or ``timeout_s``) the guest keeps using the old disk, the new file is
        removed and :class:`DiskMoveFailed` is raised naming the VM and the disk."""
        move = DiskMove(index, dest, on_progress, timeout_s, confirm)
        return await self.disks.move(name, move)

    async def finish_disk_move(self, name: str, index: int, dest: Disk) -> str | None:
        """Switch disk ``index`` of ``name`` to ``dest`` if a move to it was confirmed but
        not switched (its caller went away in between; the copy still follows every write).
        Returns the file the guest used until now (for the caller to delete), or None when
        there is nothing to finish."""
        return await self.disks.finish_move(name, index, dest)

    async def disk_sizes(self, name: str) -> builtins.list[int]:
        """The virtual size in bytes of each disk of the running VM ``name``, in spec order."""
        return await self.disks.sizes(name)

    async def prepare_incoming_with_disks(
        self,
        spec: VMSpec,
        epoch: int,
        host: str,
        sizes: Sequence[int],
        settings: MigrationSettings | None = None,
    ) -> IncomingDisks:
        """Shared-nothing migration, target side: create each disk of ``spec`` as a new empty
        image of ``sizes[i]`` bytes (refused if a file is there), start ``spec`` as
        :meth:`prepare_incoming` does, and export the disks writable on ``host`` for the
        source to copy into. On failure nothing is left behind. After a later
        :meth:`discard` the caller deletes the files (``IncomingDisks.paths``)."""
        incoming = Receive(spec, epoch, host, settings, tuple(sizes))
        return await self.disks.receive(incoming)

    def disks_host(self, disks_address: str) -> str:
        """The host a shared-nothing target's ``disks_address`` (in this driver's form, see
        :class:`IncomingDisks`) points at: its source checks it is the target node's
        registered migration address before sending the disks there. Raises
        :class:`SpecError` (field ``disks_address``) if it is not in that form."""
        return self.disks.address_host(disks_address)

    # -- checkpoints ------------------------------------------------------------------------

    async def checkpoint(
        self, spec: VMSpec, action: CheckpointAction, name: str
    ) -> builtins.list[Checkpoint]:
        """Create, revert to or delete checkpoint ``name`` of VM ``spec`` (internal snapshots
        of its writable qcow2 disks); return what its disks hold then. A VM running here is
        checkpointed with its memory and a revert resumes that memory; a VM not running here
        (stopped) has its disks alone snapshotted or reverted. Raises
        :class:`~hvcluster.drivers.errors.CheckpointFailed` with the reason (here: a VM
        whose disks cannot hold one; the parts have writable qcow2 disks to work on)."""
        problem = checkpoint_problem(spec)
        if problem is not None:
            raise CheckpointFailed(problem)
        return await self.checkpointer.run(spec, action, name)

    async def checkpoints(self, spec: VMSpec) -> builtins.list[Checkpoint]:
        """The checkpoints VM ``spec``'s first writable disk holds."""
        if checkpoint_problem(spec) is not None:
            return []
        return await self.checkpointer.list(spec)

    # -- the driver itself ------------------------------------------------------------------

    @abstractmethod
    async def close(self) -> None:
        """Let go of every VM (they keep running) and of the driver's own resources."""

    def _emit(self, event: VMEvent) -> None:
        """Queue a state change for :meth:`events`; the oldest is dropped if nobody listens."""
        if self._events.full():
            self._events.get_nowait()
        self._events.put_nowait(event)
