"""A migration record (``migrations/<id>``): a stored, idempotent job."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field

from hvcluster.models.base import Model
from hvcluster.models.config import COUNT_MAX, MigrationSettings
from hvcluster.models.lifecycle import MigrationState
from hvcluster.models.names import Name, check_name
from hvcluster.models.node import Node
from hvcluster.models.vm import MEMORY_MIB_MAX, MEMORY_MIB_MIN, VCPUS_MAX, Boot, VMSpec


def _name_or_empty(value: str) -> str:
    return value if value == "" else check_name(value)


TargetName = Annotated[str, AfterValidator(_name_or_empty)]

# The one form of address a migration is sent to (QEMU's ``migrate`` takes any URI, ``exec:``
# included: whoever can write a record must not be able to make a source run a command).
_TCP = re.compile(r"^tcp:(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})):([0-9]{1,5})$")


def check_migration_address(value: str) -> str:
    """``tcp:HOST:PORT`` (HOST a name, an IPv4 address or a bracketed IPv6 one), or empty."""
    if value == "":
        return value
    found = _TCP.match(value)
    if found is None or not 0 < int(found.group(2)) < 65536:
        raise ValueError(f"migration address {value!r} is not tcp:HOST:PORT")
    return value


def address_host(address: str) -> str:
    """The HOST of a ``tcp:HOST:PORT`` address, without IPv6 brackets."""
    return address.removeprefix("tcp:").rpartition(":")[0].strip("[]")


MigrationAddress = Annotated[str, AfterValidator(check_migration_address)]

# Quick migration: where the saved state goes, relative to the volume chosen for it.
STATE_DIR = ".hvc-migration-state"
_STATE_FILE = re.compile(r"^[a-z0-9][a-z0-9-]*:" + re.escape(STATE_DIR) + r"/[A-Za-z0-9_.-]+$")


def _state_file(value: str) -> str:
    if value and (_STATE_FILE.match(value) is None or ".." in value):
        raise ValueError(f"state file {value!r} is not VOLUME:{STATE_DIR}/NAME")
    return value


StateFile = Annotated[str, AfterValidator(_state_file)]


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
    # As QEMU reckons them: the guest's dirty rate in MiB/s, the pause the last pass would take
    # now, and how much auto-converge slows the guest's vCPUs (0-99 %).
    dirty_rate_mib_s: float = Field(default=0.0, ge=0)
    expected_downtime_ms: float = Field(default=0.0, ge=0)
    cpu_throttle_pct: int = Field(default=0, ge=0, le=100)
    postcopy: bool = False  # the VM runs on the target, fetching what it lacks from the source
    # What the optional techniques did, when on: pages sent as XBZRLE deltas of the copy
    # sent before, pages looked up in its cache and not found there (from the second pass),
    # and bytes sent over multifd's parallel channels.
    xbzrle_pages: int = Field(default=0, ge=0)
    xbzrle_cache_misses: int = Field(default=0, ge=0)
    multifd_bytes: int = Field(default=0, ge=0)
    # How fast QEMU sends now, in MiB/s (what a bandwidth cap bounds); 0: not reported.
    transfer_rate_mib_s: float = Field(default=0.0, ge=0)


class RunningSize(Model):
    """The size a running VM's guest was started with (``vcpus``, ``memory_mib``, ``boot``),
    which an edit of its spec does not change until its next cold start. A live or quick
    move carries it (written by the source, from its driver) so that the target builds the
    incoming VM as the guest runs: QEMU refuses a state of another RAM size or vCPU count,
    and a direct-boot guest's kernel is part of what moves. Validated as the spec's fields."""

    vcpus: int = Field(gt=0, le=VCPUS_MAX)
    memory_mib: int = Field(ge=MEMORY_MIB_MIN, le=MEMORY_MIB_MAX)
    boot: Boot = Boot()

    @classmethod
    def of(cls, spec: VMSpec) -> RunningSize:
        return cls(vcpus=spec.vcpus, memory_mib=spec.memory_mib, boot=spec.boot)

    def applied(self, spec: VMSpec) -> VMSpec:
        """``spec`` (its disks, NICs, name, uid as stored now) with this size."""
        return spec.model_copy(update=dict(self))


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
    target_address: MigrationAddress = ""  # tcp:HOST:PORT the target listens on (PREPARING)
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
    # Quick migration: the state goes to a volume both nodes see (chosen with the target,
    # as VOLUME:path); the target says when it can take it (``state_prepared``), the source
    # when it is saved (``saved_path``, the same file), and the target checks it can read
    # it (``state_verified``) before the placement may flip.
    state_file: StateFile = ""
    state_prepared: bool = False
    saved_path: StateFile = ""
    state_verified: bool = False
    switching_at: float = 0.0  # wall clock the transfer completed (quick: state saved)
    resumed_at: float = 0.0  # wall clock the target ran the VM (0: not yet)
    # storage: the volume the disks move to (see store/migrations.py); live: a
    # shared-nothing migration, the disks copied to this volume of the target
    volume: str = ""
    disk_sizes: tuple[int, ...] = ()  # shared-nothing: the disks' sizes, from the source
    disks_address: str = ""  # shared-nothing: where the target takes the disks (NBD)
    # The CPU model the VM runs with, set by the controller when it picks the target: the
    # target starts its incoming (or restored) QEMU with it, never with its own default.
    cpu_model: str = ""
    # Live and quick: the size the guest runs with, written by the source before the target
    # prepares (None: not yet, or a record from before it existed: the spec's size).
    running: RunningSize | None = None
    # Live: this migration's bandwidth cap in MiB/s (hvc vm move --max-bandwidth), over the
    # cluster's migration.max_bandwidth_mib_s, for precopy and postcopy alike. None: the
    # cluster's settings.
    max_bandwidth_mib_s: int | None = Field(default=None, gt=0, le=COUNT_MAX)

    @property
    def active(self) -> bool:
        return self.state not in _FINAL

    @property
    def target_ready(self) -> bool:
        """The target is ready for the transfer: it listens (live), or it sees the volume
        the state is saved to (quick)."""
        if self.kind is MigrationKind.QUICK:
            return self.state_prepared and bool(self.state_file)
        return bool(self.target_address)


def settings_for(rec: Migration, settings: MigrationSettings) -> MigrationSettings:
    """The cluster's migration ``settings`` as ``rec``'s source runs it: with the record's
    own bandwidth cap, if it has one, in place of the cluster's (QEMU's max-bandwidth, and
    max-postcopy-bandwidth once postcopy starts)."""
    cap = rec.max_bandwidth_mib_s
    if cap is None:
        return settings
    return settings.model_copy(
        update={"max_bandwidth_mib_s": cap, "max_postcopy_bandwidth_mib_s": cap}
    )


def needs_running(rec: Migration) -> bool:
    """Does ``rec`` move a running guest's state (live or quick), so that its target must
    build the VM with the size it runs with (:class:`RunningSize`)? A storage move does not."""
    return rec.kind is not MigrationKind.STORAGE


def sized_as_running(spec: VMSpec, rec: Migration) -> VMSpec:
    """``spec`` as the target of ``rec`` builds it: with the size the guest runs with, or
    the spec's own for a record written before the size was carried."""
    return rec.running.applied(spec) if rec.running is not None else spec


def state_file_for(volume: str, vm: str, mid: str) -> str:
    """Where quick migration ``mid`` of ``vm`` saves its state on ``volume``."""
    return f"{volume}:{STATE_DIR}/{vm}-{mid}.state"


def split_state_file(state_file: str) -> tuple[str, str]:
    """(volume, path relative to it) of a ``state_file``."""
    volume, _, path = state_file.partition(":")
    return volume, path


def state_volume(spec: VMSpec, source: Node, target: Node) -> str | None:
    """The volume a quick migration of ``spec`` from ``source`` to ``target`` saves its
    state to: one both nodes see, the VM's own disk volume first; None if they share none
    (the target could not read a state saved anywhere else)."""
    shared = set(source.volumes) & set(target.volumes)
    for disk in spec.disks:
        if disk.volume is not None and disk.volume in shared:
            return disk.volume
    return min(shared) if shared else None


def no_state_volume(source: Node, target: Node) -> str:
    return (
        f"{source.name} and {target.name} share no volume to save the VM's state on: "
        f"no quick migration between them"
    )


_FINAL = frozenset({MigrationState.DONE, MigrationState.FAILED, MigrationState.CANCELLED})
