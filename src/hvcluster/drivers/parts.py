"""The parts a driver is composed of, as the contract (:class:`~hvcluster.drivers.base.Driver`)
calls them.

A driver runs its VMs itself (start, stop, state: the *books* of what it runs) and hands
migrations and disk work to collaborators: :class:`Migrator` (live migration, both ends),
:class:`Saver` (quick migration to and from a file) and :class:`DiskMover` (storage
migration and shared-nothing migration). The contract's methods that only delegate are
written once, in :class:`~hvcluster.drivers.base.Driver`; each part gets the request as one
value (:class:`Receive`, :class:`Send`, :class:`DiskMove`), not as the contract's long
argument list again.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from hvcluster.drivers.errors import NotRunning
from hvcluster.models.checkpoint import Checkpoint, CheckpointAction
from hvcluster.models.config import MigrationSettings
from hvcluster.models.vm import Disk, VMSpec

if TYPE_CHECKING:  # the contract module imports this one
    from hvcluster.drivers.base import (
        CompletionHook,
        Confirm,
        DiskMoveResult,
        IncomingDisks,
        MigrationResult,
        ProgressCallback,
        VMInfo,
    )


@dataclass(frozen=True)
class Receive:
    """An incoming migration to prepare: ``spec`` started paused as placement ``epoch``,
    listening on ``host``; for a shared-nothing one, new disks of ``sizes`` bytes."""

    spec: VMSpec
    epoch: int
    host: str
    settings: MigrationSettings | None = None
    sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Send:
    """An outgoing migration of a running VM: memory to ``address``, and for a shared-nothing
    one its disks to ``disks_address`` first."""

    address: str
    settings: MigrationSettings
    on_progress: ProgressCallback | None = None
    on_complete: CompletionHook | None = None
    disks_address: str = ""


@dataclass(frozen=True)
class DiskMove:
    """Disk ``index`` of a running VM moved to ``dest`` (see ``Driver.move_disk``)."""

    index: int
    dest: Disk
    on_progress: ProgressCallback | None = None
    timeout_s: float = 3600.0
    confirm: Confirm | None = None


class Migrator(Protocol):
    async def receive(self, incoming: Receive) -> str: ...

    async def send(self, name: str, send: Send) -> MigrationResult: ...

    async def cancel(self, name: str) -> None: ...


class Saver(Protocol):
    async def save(self, name: str, path: Path) -> MigrationResult: ...

    async def restore(self, spec: VMSpec, epoch: int, path: Path, paused: bool) -> VMInfo: ...


class DiskMover(Protocol):
    async def move(self, name: str, move: DiskMove) -> DiskMoveResult: ...

    async def finish_move(self, name: str, index: int, dest: Disk) -> str | None: ...

    async def sizes(self, name: str) -> builtins.list[int]: ...

    async def receive(self, incoming: Receive) -> IncomingDisks: ...

    def address_host(self, disks_address: str) -> str: ...

    async def send(self, name: str, send: Send) -> MigrationResult: ...

    async def cancel_copy(self, name: str) -> None: ...


class Checkpointer(Protocol):
    async def run(
        self, spec: VMSpec, action: CheckpointAction, name: str
    ) -> builtins.list[Checkpoint]: ...

    async def list(self, spec: VMSpec) -> builtins.list[Checkpoint]: ...


class HasInfo(Protocol):
    @property
    def spec(self) -> VMSpec: ...  # the spec it was started (or received) with

    def info(self) -> VMInfo: ...


class Books(Protocol):
    """What a driver runs (``running``) and what stopped or crashed here since (``gone``)."""

    @property
    def running(self) -> Mapping[str, HasInfo]: ...

    @property
    def gone(self) -> Mapping[str, VMInfo]: ...

    def look(self, name: str | None = None) -> None:
        """Notice what happened by now to VM ``name`` (None: to every VM): it crashed,
        its process was killed."""


def known_vm(books: Books, name: str) -> VMInfo:
    """The state of ``name`` from a driver's books: a VM it runs, else one that stopped or
    crashed here and was not started again or discarded; else :class:`NotRunning`."""
    books.look(name)
    if name in books.running:
        return books.running[name].info()
    if name in books.gone:
        return books.gone[name]
    raise NotRunning(name)


def known_vms(books: Books) -> list[VMInfo]:
    """Every VM in a driver's books, running or gone, by name."""
    books.look()
    infos = [vm.info() for vm in books.running.values()]
    infos += [info for name, info in books.gone.items() if name not in books.running]
    return sorted(infos, key=lambda i: i.name)
