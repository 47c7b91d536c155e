"""The ``qemu`` driver: real VMs, one detached QEMU each, through QMP."""

from hvcluster.drivers.qemu.driver import QemuDriver
from hvcluster.drivers.qemu.settings import QemuSettings

__all__ = ["QemuDriver", "QemuSettings"]
