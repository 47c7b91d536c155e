"""The errors a driver raises. Only these (all :class:`DriverError`) ever leave a driver."""

from __future__ import annotations

from hvcluster.models.errors import DriverError


class SpecError(DriverError):
    """The VM spec cannot run on this host: a missing disk, too much memory, an unknown bridge.

    ``field`` names the part of the spec that is wrong (``disks[0].path``, ``memory_mib``)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class NotRunning(DriverError):
    """The named VM is not running on this host (never started, stopped, or gone)."""

    def __init__(self, name: str, detail: str = "") -> None:
        self.name = name
        super().__init__(
            f"vm {name!r} is not running on this host" + (f": {detail}" if detail else "")
        )


class NoConsole(DriverError):
    """The VM runs here but has no console of that kind (a driver without one, or a VM started
    before its driver gave it one: it gets one at its next start)."""


class AlreadyRunning(DriverError):
    """A VM of that name already runs on this host."""

    def __init__(self, name: str, pid: int | None = None) -> None:
        self.name = name
        super().__init__(
            f"vm {name!r} is already running on this host" + (f" (pid {pid})" if pid else "")
        )


class HypervisorMissing(DriverError):
    """The hypervisor (the QEMU binary, ``qemu-img``) is not installed or not executable."""


class QemuFailed(DriverError):
    """QEMU refused to start, exited, or a QMP command failed. The message carries QEMU's words."""


class MigrationFailed(DriverError):
    """A live migration, save or restore did not complete. The VM keeps running on the source."""


class MigrationCancelled(MigrationFailed):
    """The migration was cancelled on request."""


class PostcopyFailed(MigrationFailed):
    """A migration failed in postcopy: the guest ran on the target while part of its memory
    was still on the source, so neither copy can run on. Both QEMUs are killed (the source
    must never resume it) and the VM starts again from its disk; the message says what was
    lost."""


class DiskMoveFailed(MigrationFailed):
    """A storage migration (a disk copied to a new file, or to another host) did not complete.
    The VM keeps using its old disk."""


class ProcessFailed(DriverError):
    """A helper process the driver needs (the sim driver's placeholder, ``ip``) failed."""


class CheckpointFailed(DriverError):
    """A checkpoint could not be created, reverted to or removed (QEMU's or qemu-img's
    words, or why it cannot be: a raw disk, a disk-only checkpoint on a running VM)."""
