"""The ``qemu`` driver: real VMs, one detached QEMU each, through QMP."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hvcluster.drivers.qemu.driver import QemuDriver
from hvcluster.drivers.qemu.settings import QemuSettings

if TYPE_CHECKING:
    from hvcluster.drivers.registry import DriverOptions

__all__ = ["QemuDriver", "QemuSettings", "create"]


def create(options: DriverOptions) -> QemuDriver:
    """The registry's way to build this driver (:mod:`hvcluster.drivers.registry`)."""
    settings = QemuSettings(
        accelerator=options.accelerator, cache_dir=options.cache_dir, cpu_model=options.guest_cpu
    )
    return QemuDriver(options.run_dir, settings)
