"""Settings of the qemu driver on one host."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from hvcluster.drivers.qemu.scope import ScopeMode
from hvcluster.guestimage.image import DEFAULT_CACHE
from hvcluster.models.base import Model
from hvcluster.models.guestcpu import QEMU_DEFAULT


class QemuSettings(Model):
    binary: str = "qemu-system-x86_64"
    # "auto": kvm only if a probe guest boots under KVM in probe_timeout_s (cached per host).
    accelerator: Literal["auto", "kvm", "tcg"] = "auto"
    machine: str = "q35"
    cpu_model: str = QEMU_DEFAULT  # guests whose spec names no model get this one
    cache_dir: Path = DEFAULT_CACHE  # the guest image, the probe's verdict
    volumes: dict[str, Path] = {}  # shared volume name -> where this host mounts it
    probe_timeout_s: float = Field(default=20.0, gt=0)
    start_timeout_s: float = Field(default=30.0, gt=0)
    qmp_timeout_s: float = Field(default=10.0, gt=0)
    # Each QEMU in a systemd scope of its own: auto (when systemd is PID 1), systemd, none.
    scope: ScopeMode = "auto"
