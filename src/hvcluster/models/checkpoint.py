"""Checkpoints of a VM: qcow2 internal snapshots inside its disks, with the guest's memory
when it ran (see docs/architecture.md, "Checkpoints").

A checkpoint lives in the VM's disk files, so it survives failover and moves with live and
quick migration (the same files, opened elsewhere). Each change is an operation record
(``requests/checkpoints/<id>``, :class:`CheckpointOp`) carried out by the agent of the node
the VM is placed on; it holds the VM's job key (store/jobs.py) so that it never runs with a
migration or storage move of the same VM. The agent then writes what the disk holds
(``checkpoints/<vm>``, :class:`CheckpointList`), which the API lists.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field

from hvcluster.models.base import Model
from hvcluster.models.lifecycle import Lifecycle, MigrationState
from hvcluster.models.names import Name, matching
from hvcluster.models.vm import VMSpec

# Starts with a letter: QEMU finds a snapshot by its numeric id as well as by its name.
_CHECKPOINT = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def check_checkpoint_name(value: str) -> str:
    rule = "use 1-63 lowercase letters, digits or '-', starting with a letter"
    return matching(_CHECKPOINT, value, "checkpoint name", rule)


CheckpointName = Annotated[str, AfterValidator(check_checkpoint_name)]


class CheckpointAction(StrEnum):
    CREATE = "create"
    REVERT = "revert"
    DELETE = "delete"


_M = MigrationState
CHECKPOINT_LIFECYCLE: Lifecycle[MigrationState] = Lifecycle(
    "checkpoint operation",
    {
        _M.REQUESTED: frozenset({_M.PREPARING, _M.FAILED}),
        _M.PREPARING: frozenset({_M.DONE, _M.FAILED}),  # the agent took it, then its driver
        _M.DONE: frozenset(),
        _M.FAILED: frozenset(),
    },
)


class Checkpoint(Model):
    """One checkpoint as the VM's first disk holds it."""

    name: str
    created: float = 0.0  # wall clock (QEMU's date of the snapshot)
    size: int = Field(default=0, ge=0)  # bytes of saved memory (0: none)
    memory: bool = False  # the guest's memory and devices were saved: revert resumes it


class CheckpointList(Model):
    """What the VM's disks hold, as the agent that last changed (or read) them saw it."""

    vm: Name
    uid: str = ""  # the VMSpec.uid of the VM whose disks these are (not an older namesake)
    checkpoints: tuple[Checkpoint, ...] = ()
    node: str = ""
    updated: float = 0.0

    def find(self, name: str) -> Checkpoint | None:
        return next((c for c in self.checkpoints if c.name == name), None)


class CheckpointOp(Model):
    """A checkpoint change requested of the agent of ``node`` (where ``vm`` is placed at
    ``epoch``). States (:data:`CHECKPOINT_LIFECYCLE`): requested -> preparing (the agent
    took it) -> done or failed."""

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    vm: Name
    node: Name
    epoch: int = Field(default=0, ge=0)
    action: CheckpointAction
    name: CheckpointName
    state: MigrationState = MigrationState.REQUESTED
    created: float = 0.0
    updated: float = 0.0
    reason: str = ""
    requested_by: str = ""

    @property
    def active(self) -> bool:
        return self.state in (MigrationState.REQUESTED, MigrationState.PREPARING)

    @property
    def what(self) -> str:
        return f"checkpoint {self.action.value} {self.name!r}"


def checkpoint_problem(spec: VMSpec) -> str | None:
    """Why ``spec``'s VM cannot have checkpoints (they are qcow2 internal snapshots), or None."""
    if not spec.disks:
        return f"vm {spec.name} has no disk: a checkpoint is stored in its disks"
    for i, disk in enumerate(spec.disks):
        if not disk.readonly and disk.format != "qcow2":
            return (
                f"disk {i} of vm {spec.name} ({disk.path}) is {disk.format}: checkpoints are "
                "qcow2 internal snapshots, every writable disk must be qcow2"
            )
    if all(disk.readonly for disk in spec.disks):
        return f"vm {spec.name} has no writable disk to store a checkpoint in"
    return None


def action_problem(
    vm: str, action: CheckpointAction, name: str, found: Sequence[Checkpoint], running: bool
) -> str | None:
    """Why ``action`` on checkpoint ``name`` cannot be done, given what the disk holds
    (``found``) and whether the VM runs: what QEMU would refuse less clearly, or not at all."""
    has = next((c for c in found if c.name == name), None)
    if action is CheckpointAction.CREATE and has is not None:
        return f"vm {vm} has a checkpoint {name!r} already"
    if action is not CheckpointAction.CREATE and has is None:
        return f"vm {vm} has no checkpoint {name!r}"
    if action is CheckpointAction.REVERT and running and has is not None and not has.memory:
        return (
            f"checkpoint {name!r} of vm {vm} holds no memory (taken while it was stopped): "
            "stop the VM to revert to it"
        )
    return None
