"""A VM's spec (``vms/<vm>``), its placement (``placements/<vm>``) and status (``status/<vm>``)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, Self

from pydantic import Field, model_validator

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


class Failback(Model):
    mode: FailbackMode = FailbackMode.NEVER
    window_start_hour: int = Field(default=0, ge=0, le=23)  # local hour, [start, end)
    window_end_hour: int = Field(default=0, ge=0, le=23)

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.mode is FailbackMode.WINDOW and self.window_start_hour == self.window_end_hour:
            raise ValueError("failback window_start_hour and window_end_hour must differ")
        return self


class HAPolicy(Model):
    priority: Priority = Priority.MEDIUM
    # ordered: first is most preferred
    preferred_owners: tuple[Name, ...] = Field(default=(), max_length=NODE_NAMES_MAX)
    possible_owners: tuple[Name, ...] = Field(default=(), max_length=NODE_NAMES_MAX)  # (): any
    anti_affinity_classes: tuple[ShortText, ...] = Field(default=(), max_length=LIST_MAX)
    anti_affinity_enforced: bool = False  # hard if true, soft (best effort) otherwise
    # failovers allowed in the period
    failover_threshold: int = Field(default=3, ge=0, le=FAILOVERS_MAX)
    failover_period_s: float = Field(default=6 * 3600.0, gt=0, le=PERIOD_S_MAX)
    failback: Failback = Failback()
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


class Disk(Model):
    """A disk image: a qcow2 (or raw) file, on a shared volume or at an absolute path."""

    path: HostPath = Field(min_length=1)  # relative to the volume's path, or absolute
    volume: Name | None = None
    format: Literal["qcow2", "raw"] = "qcow2"
    size_gib: float | None = Field(default=None, gt=0, le=DISK_GIB_MAX)  # created if missing
    readonly: bool = False

    @model_validator(mode="after")
    def _path(self) -> Self:
        if self.volume is None and not self.path.startswith("/"):
            raise ValueError("path must be absolute when no volume is given")
        if ".." in self.path.split("/"):
            raise ValueError("path must not contain '..'")
        return self


class Nic(Model):
    switch: Name
    mac: Mac


class Boot(Model):
    """Direct kernel boot (the test guest); without it QEMU boots the first disk."""

    kernel: HostPath | None = None
    initrd: HostPath | None = None
    cmdline: Argument = Field(default="", max_length=CMDLINE_MAX)


class VMSpec(Model):
    name: Name
    vcpus: int = Field(default=1, gt=0, le=256)
    memory_mib: int = Field(default=128, ge=16, le=4 * 1024 * 1024)
    disks: tuple[Disk, ...] = Field(default=(), max_length=DISKS_MAX)
    nics: tuple[Nic, ...] = Field(default=(), max_length=NICS_MAX)
    boot: Boot = Boot()
    desired_state: Literal["running", "stopped"] = "running"
    ha: HAPolicy = HAPolicy()
    labels: Labels = {}
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
