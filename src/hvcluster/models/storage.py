"""Shared volumes and virtual switches."""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum

from pydantic import Field, ValidationInfo, field_validator

from hvcluster.models.base import Model
from hvcluster.models.names import Name, matching
from hvcluster.models.vm import Disk, VMSpec

# Host directories that are never a volume (nor an allowed disk directory): the first list
# with everything under it (the system's own files), the second only as itself (a volume
# may well live under /srv, /mnt or /var/lib, never be it; the lab's lives under /run).
SYSTEM_TREES = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin",
    "/sys", "/usr", "/var/log", "/var/run", "/var/lock", "/run/lock", "/run/systemd",
    "/run/user", "/run/udev", "/run/dbus",
)  # fmt: skip
SYSTEM_DIRS = (
    "/", "/home", "/media", "/mnt", "/opt", "/root", "/run", "/srv", "/tmp", "/var", "/var/lib",
)  # fmt: skip


def normal_dir(path: str) -> str:
    """``path`` as one absolute form: single slashes, no trailing one, no ``.``; ``..`` is
    refused (ValueError), not resolved."""
    if not path.startswith("/"):
        raise ValueError(f"{path!r} must be an absolute path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts or "\0" in path:
        raise ValueError(f"{path!r} must not contain '..' or NUL")
    return "/" + "/".join(parts)


def system_dir_problem(path: str) -> str | None:
    """Why the normal absolute ``path`` cannot hold the cluster's files, or None: it is
    ``/`` or a system directory (agents run as root, and delete files on volumes)."""
    for tree in SYSTEM_TREES:
        if path == tree or path.startswith(tree + "/"):
            return f"{path} is a system directory ({tree} holds the host's own files)"
    if path in SYSTEM_DIRS:
        return f"{path} is a system directory: use a directory of its own below it"
    return None


def check_volume_path(path: str) -> str:
    """A volume's path, normalised; ValueError when it is a system directory."""
    normal = normal_dir(path)
    problem = system_dir_problem(normal)
    if problem is not None:
        raise ValueError(f"not a volume path: {problem}")
    return normal


class Volume(Model):
    """A path that every node mounts (NFS, CephFS, a cluster filesystem; in the lab a dir).
    Never ``/`` nor a system directory (:func:`system_dir_problem`)."""

    name: Name
    path: str = Field(pattern=r"^/", max_length=4096)
    id: str = Field(min_length=1, max_length=64)  # the one its marker holds

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return check_volume_path(value)


# <volume path>/.hvc-volume holds the volume's id. An admin places it (``hvc volume mark
# PATH``, or any 8-64 letters, digits, '-', '_', '.' written into that file); ``hvc volume
# add`` then adopts the id it holds. No agent ever writes it.
MARKER = ".hvc-volume"
MARKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{7,63}$")


class SwitchType(StrEnum):
    EXTERNAL = "external"  # bridged to an uplink NIC
    INTERNAL = "internal"  # VMs and the host
    PRIVATE = "private"  # VMs only


# Linux interface names: at most 15 bytes (IFNAMSIZ - 1), no '/', ':' or whitespace.
IFNAME_MAX = 15
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
BRIDGE_PREFIX = "hvc-"


def check_ifname(value: str) -> str:
    """A Linux interface name we are willing to pass to ``ip``."""
    rule = f"use 1-{IFNAME_MAX} letters, digits, '-', '_' or '.', starting with a letter or digit"
    return matching(_IFNAME, value, "interface name", rule)


def bridge_name(switch: str) -> str:
    """The Linux bridge that carries switch ``switch`` on every node: ``hvc-<name>``.

    The one mapping from switch to bridge, used by the agent (which creates the bridge) and
    the drivers (which put VM taps on it). Names longer than fit in 15 characters are cut
    and given a hash of the full name after a ".", so no two switches share a bridge."""
    room = IFNAME_MAX - len(BRIDGE_PREFIX)
    if len(switch) <= room:
        name = BRIDGE_PREFIX + switch
    else:
        digest = hashlib.sha1(switch.encode()).hexdigest()[:4]
        name = f"{BRIDGE_PREFIX}{switch[: room - 5]}.{digest}"  # "." is in no switch name
    return check_ifname(name)


class Switch(Model):
    name: Name
    type: SwitchType = SwitchType.PRIVATE
    uplink: str | None = None  # external switches only: the NIC bridged in, where present

    @field_validator("uplink")
    @classmethod
    def _uplink(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A NIC of an external switch (an error here names the field ``uplink``)."""
        if value is None:
            return None
        value = check_ifname(value)
        kind = info.data.get("type")
        if kind is not None and kind is not SwitchType.EXTERNAL:
            raise ValueError(f"uplink is only for external switches, not {kind.value} ones")
        if value.startswith(BRIDGE_PREFIX):
            raise ValueError(f"uplink {value!r} is one of our own bridges")
        return value

    @property
    def bridge(self) -> str:
        return bridge_name(self.name)


class DiskDeletion(Model):
    """A request, stored at ``requests/delete-disks/<vm>`` by ``DELETE /vms/<vm>?disks=true``,
    that an agent seeing the volumes delete the deleted VM's disk files once no node holds
    the VM's disk locks. Only disks on volumes that the cluster created for that VM
    (:class:`CreatedDisk`) and that no VM's spec names are ever deleted; the others are kept,
    with an event saying why."""

    vm: Name
    disks: tuple[Disk, ...]
    requested_at: float = 0.0
    uid: str = ""  # the deleted VM's VMSpec.uid


class CreatedDisk(Model):
    """Stored at ``disks/<VOLUME:relative/path>`` by the agent that created that file (for
    a VM's sized disk, a storage move or a shared-nothing copy). The cluster deletes only
    files it has such a record of, and only for the VM it created them for."""

    file: str
    vm: Name
    uid: str = ""  # the VMSpec.uid of that VM ("": created before uids existed)
    node: Name
    created_at: float = 0.0


# --- storage migration: where a VM's disks go on another volume ----------------------------
def disk_on_volume(disk: Disk, vm: str, volume: str) -> Disk:
    """Where ``disk`` goes on ``volume``: the same relative path (a disk outside any volume:
    ``<vm>/<file name>``), same format and size."""
    path = disk.path if disk.volume is not None else f"{vm}/{disk.path.rsplit('/', 1)[-1]}"
    return disk.model_copy(update={"volume": volume, "path": path})


def disks_to_move(spec: VMSpec, volume: str) -> list[int]:
    """The disks of ``spec`` a move to ``volume`` copies: writable ones not on it already."""
    return [i for i, d in enumerate(spec.disks) if not d.readonly and d.volume != volume]


def spec_on_volume(spec: VMSpec, volume: str) -> VMSpec:
    """``spec`` with every disk :func:`disks_to_move` names on ``volume``."""
    moving = set(disks_to_move(spec, volume))
    disks = tuple(
        disk_on_volume(d, spec.name, volume) if i in moving else d for i, d in enumerate(spec.disks)
    )
    return spec.model_copy(update={"disks": disks})
