"""A migration record (``migrations/<id>``): a stored, idempotent job."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field

from hvcluster.models.base import Model
from hvcluster.models.lifecycle import MigrationState
from hvcluster.models.names import Name, check_name


def _name_or_empty(value: str) -> str:
    return value if value == "" else check_name(value)


TargetName = Annotated[str, AfterValidator(_name_or_empty)]


class MigrationKind(StrEnum):
    LIVE = "live"
    QUICK = "quick"  # save state to a shared volume, restore on the target
    STORAGE = "storage"  # move a running VM's disk to another volume


class Progress(Model):
    bytes_transferred: int = Field(default=0, ge=0)
    bytes_remaining: int = Field(default=0, ge=0)
    bytes_total: int = Field(default=0, ge=0)
    dirty_rate_pages_s: float = Field(default=0.0, ge=0)
    passes: int = Field(default=0, ge=0)


class Migration(Model):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    vm: Name
    source: Name
    target: TargetName = ""  # empty while requested: the controller picks one
    kind: MigrationKind = MigrationKind.LIVE
    state: MigrationState = MigrationState.REQUESTED
    created: float = 0.0
    updated: float = 0.0
    epoch: int = Field(default=0, ge=0)  # the placement epoch it started from
    target_address: str = ""  # host:port the target listens on, set in PREPARING
    progress: Progress = Progress()
    # As the guest saw it: from its pause on the source to its resume on the target (the
    # transfer's downtime plus the switch), and from the request to that resume.
    downtime_ms: float | None = None
    total_ms: float | None = None
    # As QEMU measured the transfer alone (quick: the save).
    transfer_downtime_ms: float | None = None
    transfer_ms: float | None = None
    reason: str = ""
    requested_by: str = ""  # "api", "drain:<node>", "failback", "resume:<node>"
    saved_path: str = ""  # quick migration: the state file on a shared path
    switching_at: float = 0.0  # wall clock the transfer completed (quick: state saved)
    resumed_at: float = 0.0  # wall clock the target ran the VM (0: not yet)
    # storage: the volume the disks move to (see store/storage_moves.py); live: a
    # shared-nothing migration, the disks copied to this volume of the target
    volume: str = ""
    disk_sizes: tuple[int, ...] = ()  # shared-nothing: the disks' sizes, from the source
    disks_address: str = ""  # shared-nothing: where the target takes the disks (NBD)
    # The CPU model the VM runs with, set by the controller when it picks the target: the
    # target starts its incoming (or restored) QEMU with it, never with its own default.
    cpu_model: str = ""

    @property
    def active(self) -> bool:
        return self.state not in _FINAL


_FINAL = frozenset({MigrationState.DONE, MigrationState.FAILED, MigrationState.CANCELLED})
