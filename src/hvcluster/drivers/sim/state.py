"""What a sim driver keeps of each VM, in memory and (with a run dir) on disk."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from hvcluster.drivers.base import VMInfo
from hvcluster.drivers.errors import MigrationFailed, SpecError
from hvcluster.drivers.runtime import write_json
from hvcluster.drivers.sim import model
from hvcluster.drivers.sim.transport import Incoming
from hvcluster.models.base import Model
from hvcluster.models.lifecycle import VMState
from hvcluster.models.vm import VMSpec


class SimHost(Model):
    """The simulated host."""

    cpus: int = Field(default=16, gt=0)
    memory_mib: int = Field(default=64 * 1024, gt=0)
    host_cpu: str = "sim-cpu"  # the host's CPU model, and the default its guests get
    guest_cpu_models: tuple[str, ...] = ()  # models it can give guests (): host_cpu only
    switches: tuple[str, ...] = ()  # bridges this host has
    volumes: dict[str, Path] = {}  # shared volume name -> where this host mounts it
    check_disks: bool = True  # disks must exist as files, as for qemu

    @property
    def guest_models(self) -> tuple[str, ...]:
        """The CPU models this host can give guests."""
        return self.guest_cpu_models or (self.host_cpu,)


@dataclass(eq=False)
class Moving:
    """A sim VM's migrations: the one it receives, a cancel asked of the one it sends, and
    how many it sent (each draws its own random outcome)."""

    incoming: Incoming | None = None
    cancel: bool = False
    count: int = 0


@dataclass(eq=False)
class SimVM:
    spec: VMSpec
    epoch: int
    state: VMState
    since: float
    started: float  # clock time the guest started (carried over by migrations)
    profile: model.Profile
    reason: str = ""
    pid: int | None = None
    pid_start: int | None = None
    crash_at: float | None = None
    crash_reason: str = "crashed"
    # Guest failures (see SimDriver.inject_guest_panic/_hang): its OS panicked / stopped
    # answering at these clock times. Its process runs on; only monitoring notices.
    panicked_at: float | None = None
    silent_since: float | None = None
    moving: Moving = field(default_factory=Moving)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def cpu_model(self) -> str:
        return self.spec.cpu_model  # the model its guest was given ("": the driver's default)

    def info(self) -> VMInfo:
        return VMInfo.model_validate(self, from_attributes=True)


def persist(vm: SimVM, directory: Path) -> None:
    """``sim.json``: what a new driver needs to take the VM over."""
    write_json(
        directory / "sim.json",
        {
            "state": vm.state,
            "since": vm.since,
            "started": vm.started,
            "reason": vm.reason,
            "crash_at": vm.crash_at,
            "incoming": vm.moving.incoming is not None or vm.reason == "incoming migration",
        },
    )


def write_saved_state(path: Path, data: dict[str, Any]) -> None:
    try:
        Path(path).write_text(json.dumps(data) + "\n")
    except OSError as e:
        raise MigrationFailed(f"cannot write saved state to {path}: {e}") from e


def read_saved_state(path: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise SpecError(f"saved state {path} does not exist", "path") from e
    except (OSError, ValueError) as e:
        raise MigrationFailed(f"saved state {path} is unreadable: {e}") from e
    if not isinstance(data, dict) or data.get("hvc-sim-state") != 1:
        raise MigrationFailed(f"{path} is not the saved state of a sim VM")
    if data.get("vm") != name:
        raise MigrationFailed(f"{path} holds vm {data.get('vm')!r}, not {name!r}")
    return data
