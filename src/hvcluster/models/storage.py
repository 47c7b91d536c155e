"""Shared volumes and virtual switches."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from hvcluster.models.base import Model
from hvcluster.models.names import Name


class Volume(Model):
    """A path that every node mounts (NFS, CephFS, a cluster filesystem; in the lab a dir)."""

    name: Name
    path: str = Field(pattern=r"^/")
    id: str = Field(min_length=1)  # written to a marker file, so nodes prove they see the same one


class SwitchType(StrEnum):
    EXTERNAL = "external"  # bridged to an uplink NIC
    INTERNAL = "internal"  # VMs and the host
    PRIVATE = "private"  # VMs only


class Switch(Model):
    name: Name
    type: SwitchType = SwitchType.PRIVATE
    uplink: str | None = None
