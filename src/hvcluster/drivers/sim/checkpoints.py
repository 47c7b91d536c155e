"""The sim driver's checkpoints: a stateful fake of qcow2 internal snapshots.

A VM's checkpoints are kept in a file beside its first writable disk
(``<disk>.sim-checkpoints.json``), so, as with QEMU's (inside the disk), another host that
mounts the volume sees them after a failover or migration. Each holds the bytes of every
writable disk file that exists (a revert writes them back) and, for a VM running here, says
its memory was saved (sized as the guest's memory). Refusals are QEMU's: a raw disk, a name
taken or missing, a disk-only checkpoint reverted on a running VM.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hvcluster.drivers.diskpath import disk_path
from hvcluster.drivers.errors import CheckpointFailed
from hvcluster.models.checkpoint import Checkpoint, CheckpointAction, action_problem
from hvcluster.models.vm import VMSpec

if TYPE_CHECKING:
    from hvcluster.drivers.sim.driver import SimDriver

SUFFIX = ".sim-checkpoints.json"
MIB = 1024 * 1024


class SimCheckpoints:
    """The sim driver's :class:`~hvcluster.drivers.parts.Checkpointer`."""

    def __init__(self, driver: SimDriver) -> None:
        self.driver = driver

    async def run(
        self, spec: VMSpec, action: CheckpointAction, name: str
    ) -> builtins.list[Checkpoint]:
        running = spec.name in self.driver.running
        now = self.driver.clock.wall()
        args = (self._paths(spec), spec, action, name, running, now)
        return await asyncio.to_thread(_apply, *args)

    async def list(self, spec: VMSpec) -> builtins.list[Checkpoint]:
        stored = await asyncio.to_thread(_read, self._paths(spec)[0])
        return [_checkpoint(s) for s in stored]

    def _paths(self, spec: VMSpec) -> builtins.list[Path]:
        volumes = self.driver.host.volumes
        return [disk_path(d, i, volumes) for i, d in enumerate(spec.disks) if not d.readonly]


def _apply(
    paths: builtins.list[Path],
    spec: VMSpec,
    action: CheckpointAction,
    name: str,
    running: bool,
    now: float,
) -> builtins.list[Checkpoint]:
    stored = _read(paths[0])
    problem = action_problem(spec.name, action, name, [_checkpoint(s) for s in stored], running)
    if problem is not None:
        raise CheckpointFailed(problem)
    if action is CheckpointAction.CREATE:
        data = {str(p): base64.b64encode(p.read_bytes()).decode() for p in paths if p.is_file()}
        size = spec.memory_mib * MIB if running else 0
        stored.append({"name": name, "created": now, "size": size, "data": data})
    elif action is CheckpointAction.REVERT:
        found = next(s for s in stored if s["name"] == name)
        for path, data in found["data"].items():
            Path(path).write_bytes(base64.b64decode(data))
    else:
        stored = [s for s in stored if s["name"] != name]
    _write(paths[0], stored)
    return [_checkpoint(s) for s in stored]


def _checkpoint(stored: dict[str, Any]) -> Checkpoint:
    size = int(stored["size"])
    return Checkpoint(name=stored["name"], created=stored["created"], size=size, memory=size > 0)


def _read(disk: Path) -> builtins.list[dict[str, Any]]:
    side = Path(f"{disk}{SUFFIX}")
    try:
        found: builtins.list[dict[str, Any]] = json.loads(side.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise CheckpointFailed(f"cannot read the checkpoints of {disk}: {e}") from None
    return found


def _write(disk: Path, stored: builtins.list[dict[str, Any]]) -> None:
    side = Path(f"{disk}{SUFFIX}")
    try:
        tmp = side.with_name(side.name + ".tmp")
        tmp.write_text(json.dumps(stored))
        os.replace(tmp, side)
    except OSError as e:
        raise CheckpointFailed(f"cannot write the checkpoints of {disk}: {e}") from None
