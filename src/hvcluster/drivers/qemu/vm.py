"""What the qemu driver keeps of each VM it runs, and small helpers about addresses."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from pathlib import Path

from hvcluster.drivers.base import VMInfo
from hvcluster.drivers.errors import SpecError
from hvcluster.drivers.qemu.monitor import Monitor
from hvcluster.models.lifecycle import VMState
from hvcluster.models.vm import VMSpec

# QEMU run states (query-status) as our VM states.
RUNSTATES = {
    "running": VMState.RUNNING,
    "inmigrate": VMState.MIGRATING,
    "finish-migrate": VMState.MIGRATING,
    "shutdown": VMState.STOPPING,
    "internal-error": VMState.FAILED,
    "guest-panicked": VMState.FAILED,
}  # everything else (paused, postmigrate, prelaunch, io-error, ...) is PAUSED


@dataclass(eq=False)
class QemuVM:
    name: str
    dir: Path
    spec: VMSpec
    epoch: int
    pid: int
    start: int | None
    state: VMState
    since: float
    reason: str = ""
    monitor: Monitor | None = None
    stopping: bool = False  # we asked it to go: shutdown, kill, discard
    guest_off: bool = False  # the guest powered itself off
    failure: str = ""  # the guest failed (panicked, stopped answering): we kill it for that
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    cpu_sample: tuple[float, float] | None = None  # (monotonic, cpu seconds)
    dead_since: float | None = None  # monotonic time its process was first seen gone
    exports: bool = False  # serves its disks over NBD (a shared-nothing migration target)
    checkpointing: bool = False  # a snapshot job pauses it: no PAUSED for that (see refresh)
    postcopy: bool = False  # a migration of it (either end) went into postcopy

    @property
    def cpu_model(self) -> str:
        return self.spec.cpu_model  # the model its guest was given ("": the driver's default)

    def info(self) -> VMInfo:
        return VMInfo.model_validate(self, from_attributes=True)


def saved_state(path: Path) -> Path:
    path = Path(path).absolute()
    if not path.is_file():
        raise SpecError(f"saved state {path} does not exist", "path")
    return path


def uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def free_port(host: str) -> int:
    """A port free on ``host``, this node's migration address: an address that is not one
    of this host's (a wrong ``migration_address`` in its agent config) is the migration's
    failure, said, not an agent's crash."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])
    except OSError as e:
        raise SpecError(
            f"cannot listen on {host} for an incoming migration: {e.strerror or e}; is it "
            f"an address of this host?",
            "migration_address",
        ) from e
