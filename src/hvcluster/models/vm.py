"""A VM's spec (``vms/<vm>``), its placement (``placements/<vm>``) and status (``status/<vm>``)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, Self

from pydantic import Field, ValidationInfo, field_validator, model_validator

from hvcluster.models.base import Model
from hvcluster.models.lifecycle import VMState
from hvcluster.models.names import (
    LIST_MAX,
    NODE_NAMES_MAX,
    PERIOD_S_MAX,
    Argument,
    HostPath,
    Labels,
    Mac,
    Name,
    ShortText,
)

DISKS_MAX = 64  # per VM (Hyper-V: 4 SCSI controllers of 64 disks; QEMU runs out of slots first)
NICS_MAX = 32
DISK_GIB_MAX = 64 * 1024  # 64 TiB, as Hyper-V's VHDX; size_gib * GiB stays an exact int
CMDLINE_MAX = 4096
FAILOVERS_MAX = 10_000
VCPUS_MAX = 256
MEMORY_MIB_MIN, MEMORY_MIB_MAX = 16, 4 * 1024 * 1024


class Priority(StrEnum):
    """Recovery order, as a failover cluster's role priority."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    NO_AUTO_START = "no_auto_start"

    @property
    def rank(self) -> int:
        """Smaller recovers first."""
        return _RANK[self]


_RANK = {Priority.HIGH: 0, Priority.MEDIUM: 1, Priority.LOW: 2, Priority.NO_AUTO_START: 3}


class FailbackMode(StrEnum):
    NEVER = "never"
    IMMEDIATE = "immediate"
    WINDOW = "window"


class FailbackPolicy(Model):
    """When a VM goes back to a more preferred owner (the scheduler's decision to do so is
    :class:`hvcluster.scheduler.decisions.Failback`)."""

    mode: FailbackMode = FailbackMode.NEVER
    window_start_hour: int = Field(default=0, ge=0, le=23)  # local hour, [start, end)
    window_end_hour: int = Field(default=0, ge=0, le=23)

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.mode is FailbackMode.WINDOW and self.window_start_hour == self.window_end_hour:
            raise ValueError("failback window_start_hour and window_end_hour must differ")
        return self


class GuestMonitor(Model):
    """Watching the guest OS, beyond its QEMU process (a failover cluster's VM monitoring).

    Off by default: the devices it needs (a pvpanic device, a virtio-serial channel) are on
    the VM's command line only when it is on, so VMs created before it, and guests without
    an agent that answers, run as before. A guest that panics (``panic``) or leaves the
    channel's ``guest-sync`` unanswered for ``heartbeat_timeout_s`` is failed by its driver,
    then restarted on its node like a crashed VM (the same local restart threshold), then
    moved. Fixed at creation (the devices must match on both ends of a live migration)."""

    panic: bool = False  # a pvpanic device: the guest's panic fails the VM
    heartbeat_timeout_s: float = Field(default=0.0, ge=0, le=3600)  # 0: no heartbeat watch
    # After a (re)start, the time the guest has to answer its first ping: its whole boot,
    # up to its agent starting (minutes for some OSes; a TCG guest on a loaded host: 1).
    heartbeat_grace_s: float = Field(default=300.0, ge=0, le=3600)

    @property
    def heartbeat(self) -> bool:
        return self.heartbeat_timeout_s > 0

    @property
    def enabled(self) -> bool:
        return self.panic or self.heartbeat


class HAPolicy(Model):
    priority: Priority = Priority.MEDIUM
    # ordered: first is most preferred
    preferred_owners: tuple[Name, ...] = Field(default=(), max_length=NODE_NAMES_MAX)
    possible_owners: tuple[Name, ...] = Field(default=(), max_length=NODE_NAMES_MAX)  # (): any
    anti_affinity_classes: tuple[ShortText, ...] = Field(default=(), max_length=LIST_MAX)
    anti_affinity_enforced: bool = False  # hard if true, soft (best effort) otherwise
    # Positive affinity: VMs sharing a class run on one node (hard when either enforces it:
    # never apart on open nodes; soft: together when a node fits them).
    affinity_classes: tuple[ShortText, ...] = Field(default=(), max_length=LIST_MAX)
    affinity_enforced: bool = False
    # failovers allowed in the period
    failover_threshold: int = Field(default=3, ge=0, le=FAILOVERS_MAX)
    failover_period_s: float = Field(default=6 * 3600.0, gt=0, le=PERIOD_S_MAX)
    failback: FailbackPolicy = FailbackPolicy()
    start_group: ShortText = ""
    # groups that must be up before this one starts
    start_after: tuple[ShortText, ...] = Field(default=(), max_length=LIST_MAX)

    @model_validator(mode="after")
    def _owners_agree(self) -> Self:
        for field in ("preferred_owners", "possible_owners"):
            names: tuple[str, ...] = getattr(self, field)
            if len(set(names)) != len(names):
                raise ValueError(f"{field} lists a node twice")
        if self.possible_owners:
            outside = [n for n in self.preferred_owners if n not in self.possible_owners]
            if outside:
                raise ValueError(
                    f"preferred_owners {outside} are not among possible_owners "
                    f"{list(self.possible_owners)}"
                )
        if self.start_group and self.start_group in self.start_after:
            raise ValueError(f"start group {self.start_group!r} cannot start after itself")
        return self


def canonical_disk_path(path: str, on_volume: bool) -> str:
    """The one form a disk's path is stored, locked and deleted in: components joined by
    single slashes, no ``.`` (``./db//root.qcow2`` -> ``db/root.qcow2``); relative on a
    volume, absolute otherwise. ``..`` is refused, not resolved: it would leave the volume
    (or the allowed directory) by name. Symlinks are the agent's to check, on the host."""
    if on_volume and path.startswith("/"):
        raise ValueError(
            f"path {path!r} must be relative to its volume (VOLUME:relative/path), not absolute"
        )
    if not on_volume and not path.startswith("/"):
        raise ValueError("path must be absolute when no volume is given")
    joined = "/".join(_parts(path))
    return joined if on_volume else "/" + joined


def canonical_host_path(path: str) -> str:
    """An absolute host file's one form (as :func:`canonical_disk_path` without a volume)."""
    if not path.startswith("/"):
        raise ValueError(f"path {path!r} must be absolute")
    return "/" + "/".join(_parts(path))


def _parts(path: str) -> list[str]:
    if "\0" in path:
        raise ValueError("path must not contain a NUL character")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"path {path!r} must not contain '..'")
    if not parts:
        raise ValueError(f"path {path!r} names no file")
    return parts


def is_under(path: str, directory: str) -> bool:
    """Is the canonical absolute ``path`` inside ``directory`` (by name, no I/O)?"""
    root = directory.rstrip("/")
    return path.startswith(root + "/") and path != root


# What the cluster keeps at the top of a volume (``.hvc-volume``, ``.hvc-migration-state/``)
# is no disk: a guest given it would read another VM's memory or rewrite the marker.
CLUSTER_FILES_PREFIX = ".hvc-"


class Disk(Model):
    """A disk image: a qcow2 (or raw) file, on a shared volume (``VOLUME:relative/path``) or
    at an absolute path under a directory the cluster config allows (``allowed_disk_dirs``).
    The path is canonicalised here, once (:func:`canonical_disk_path`)."""

    volume: Name | None = None  # before path: path's validator reads it
    path: HostPath = Field(min_length=1)  # relative to the volume, or absolute
    format: Literal["qcow2", "raw"] = "qcow2"
    size_gib: float | None = Field(default=None, gt=0, le=DISK_GIB_MAX)  # created if missing
    readonly: bool = False

    @field_validator("path")
    @classmethod
    def _path(cls, value: str, info: ValidationInfo) -> str:
        if "volume" not in info.data:
            return value  # the volume itself is invalid: that is the error to report
        on_volume = info.data["volume"] is not None
        path = canonical_disk_path(value, on_volume)
        if on_volume and path.split("/", 1)[0].startswith(CLUSTER_FILES_PREFIX):
            raise ValueError(
                f"{path} is the cluster's own (the volume's marker, saved migration state: "
                f"another VM's memory), never a disk; names starting {CLUSTER_FILES_PREFIX!r} "
                "at the top of a volume are reserved"
            )
        return path

    @property
    def file(self) -> str:
        """The file's one name in the cluster: ``VOLUME:relative/path``, or the absolute path."""
        return f"{self.volume}:{self.path}" if self.volume is not None else self.path


class Nic(Model):
    switch: Name
    mac: Mac


class Boot(Model):
    """Direct kernel boot (the test guest); without it QEMU boots the first disk. The kernel
    and initrd are host files loaded into the guest: like absolute disks, only from a
    directory the cluster config allows (``allowed_disk_dirs``)."""

    kernel: HostPath | None = None
    initrd: HostPath | None = None
    cmdline: Argument = Field(default="", max_length=CMDLINE_MAX)

    @field_validator("kernel", "initrd")
    @classmethod
    def _host_file(cls, value: str | None) -> str | None:
        return None if value is None else canonical_host_path(value)

    def files(self) -> list[tuple[str, str]]:
        """(field, path) of each host file it loads."""
        return [(f, p) for f, p in (("kernel", self.kernel), ("initrd", self.initrd)) if p]


# A VM's uid: given by the API when the VM is created, carried by its placement and status,
# so that a VM created again under a deleted one's name never inherits the old one's state.
UID_PATTERN = r"^([0-9a-f]{32})?$"


class VMSpec(Model):
    name: Name
    uid: str = Field(default="", pattern=UID_PATTERN)  # "": created before uids existed
    vcpus: int = Field(default=1, gt=0, le=VCPUS_MAX)
    memory_mib: int = Field(default=128, ge=MEMORY_MIB_MIN, le=MEMORY_MIB_MAX)
    disks: tuple[Disk, ...] = Field(default=(), max_length=DISKS_MAX)
    nics: tuple[Nic, ...] = Field(default=(), max_length=NICS_MAX)
    boot: Boot = Boot()
    desired_state: Literal["running", "stopped"] = "running"
    ha: HAPolicy = HAPolicy()
    labels: Labels = {}
    monitor: GuestMonitor = GuestMonitor()
    # The named CPU model its guest sees (QEMU's -cpu). "": the model of the node that
    # cold-starts it (its agent's guest_cpu). A running VM keeps the model it was started
    # with wherever it migrates (VMStatus.cpu_model); see hvcluster.models.guestcpu.
    cpu_model: str = Field(default="", max_length=64, pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]*)?$")

    @model_validator(mode="after")
    def _unique_devices(self) -> Self:
        macs = [n.mac for n in self.nics]
        if len(set(macs)) != len(macs):
            raise ValueError("nics: two NICs share a MAC address")
        return self

    @field_validator("disks")
    @classmethod
    def _disks_once(cls, disks: tuple[Disk, ...]) -> tuple[Disk, ...]:
        files = [d.file for d in disks]
        twice = sorted({f for f in files if files.count(f) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} named twice")
        return disks


class Placement(Model):
    """Where a VM must run. ``epoch`` is the fencing token: it rises at every move."""

    node: Name
    epoch: int = Field(ge=1)
    reason: str = ""
    # Times this VM was failed over (moved off a dead node), for the failover threshold.
    failovers: tuple[float, ...] = ()
    # A cold move in progress: the agent of ``node`` shuts the VM down and reports it
    # stopped; only then does the controller place it on ``moving_to`` (epoch + 1).
    moving_to: Name | None = None
    uid: str = Field(default="", pattern=UID_PATTERN)  # the VMSpec.uid it was made for


class VMStatus(Model):
    """What the owning agent reports of a VM."""

    vm: Name
    node: str = ""  # "" when no node holds it (left failed by the controller)
    epoch: int = Field(ge=0)
    state: VMState
    pid: int | None = None
    since: float = 0.0  # wall clock of the last state change
    last_error: str = ""
    restarts: int = Field(default=0, ge=0)
    # Set by the controller: left failed, not retried until an operator starts it again.
    left_failed: bool = False
    # The CPU model its guest was started with ("": not reported): it follows the VM through
    # live and quick migrations until its next cold start.
    cpu_model: str = ""
    uid: str = Field(default="", pattern=UID_PATTERN)  # the VMSpec.uid it reports on


def same_vm(spec: VMSpec, uid: str) -> bool:
    """Is a placement or status carrying ``uid`` about the VM ``spec`` (and not about an
    older VM of the same name, deleted since)? Either side written before uids existed
    ("") counts as the same VM."""
    return same_uid(spec.uid, uid)


def same_uid(spec_uid: str, uid: str) -> bool:
    """:func:`same_vm` of a spec's uid alone."""
    return not spec_uid or not uid or uid == spec_uid
