"""A VM's one job (the value of ``jobs/<vm>``: which record holds the VM) and the pure
helpers of job records: a fresh record id, where a finished migration puts its VM."""

from __future__ import annotations

import hashlib
import uuid
from typing import Literal

from hvcluster.models.base import Model
from hvcluster.models.checkpoint import CheckpointOp
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.models.vm import Placement

RecordKind = Literal["migration", "storage-move", "checkpoint"]


class Job(Model):
    id: str
    vm: str
    record: RecordKind
    what: str  # "live migration", "storage move", "checkpoint create 'before'"...


def job_of(rec: Migration | CheckpointOp) -> Job:
    """The job key's value for ``rec``."""
    if isinstance(rec, CheckpointOp):
        return Job(id=rec.id, vm=rec.vm, record="checkpoint", what=rec.what)
    if rec.kind is MigrationKind.STORAGE:
        return Job(id=rec.id, vm=rec.vm, record="storage-move", what="storage move")
    what = "shared-nothing migration" if rec.volume else f"{rec.kind.value} migration"
    return Job(id=rec.id, vm=rec.vm, record="migration", what=what)


def new_id(vm: str, *made_of: object) -> str:
    """A fresh record id: the VM's name and a suffix sortable by nothing: random, or (given
    ``made_of``: what the record is, with its creation time from the caller's clock) a hash
    of those, so a simulation on a virtual clock makes the same ids every run. The record is
    written only if its key is absent: two records that hashed alike could not both be."""
    if not made_of:
        return f"{vm}-{uuid.uuid4().hex[:10]}"
    digest = hashlib.sha256(repr((vm, *made_of)).encode()).hexdigest()
    return f"{vm}-{digest[:10]}"


def flipped_placement(rec: Migration, current: Placement) -> Placement:
    """Where ``rec`` puts its VM when it ends: its target, at the next epoch."""
    verb = "migrated live" if rec.kind is MigrationKind.LIVE else "moved by quick migration"
    return Placement(
        node=rec.target,
        epoch=current.epoch + 1,
        reason=f"vm {rec.vm} {verb} from {rec.source} to {rec.target} (migration {rec.id})",
        failovers=current.failovers,
        uid=current.uid,
    )
