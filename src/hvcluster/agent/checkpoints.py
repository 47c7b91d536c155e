"""The owning agent's part of checkpoints (see :mod:`hvcluster.models.checkpoint`).

An operation (``requests/checkpoints/<id>``) names the VM, the node it is placed on, the
placement epoch and what to do. Only that node's agent acts on it, one task per operation:

1. *requested -> preparing*: the VM still placed here at that epoch, its job key naming this
   operation (no migration or storage move of it can start meanwhile: QEMU refuses a
   snapshot during a migration or block job, and a moved VM would lose it);
2. the driver does it: with the guest's memory when the VM runs here (QMP snapshot jobs),
   its disks alone when it is stopped (``qemu-img snapshot``);
3. one transaction: the operation done, its job key released and the VM's checkpoint list
   (``checkpoints/<vm>``, what the disks hold now, as the driver read them) written; and an
   event (``checkpoint.created``, ``checkpoint.reverted``, ``checkpoint.deleted``).

Any failure: the operation fails with the reason (``checkpoint.failed``) and the list is
read again from the disks. An agent restarted mid-operation fails it (what QEMU did is in
the list it then reads). Finished records are removed after :data:`RETAIN_S`, by any agent
(the compare on the record's revision lets one do it): the node of one may be gone for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from hvcluster.agent.node import NodeAgent
from hvcluster.agent.owned_jobs import JobFailed, OwnedJobs
from hvcluster.drivers.errors import NotRunning
from hvcluster.models.checkpoint import Checkpoint, CheckpointAction, CheckpointList, CheckpointOp
from hvcluster.models.errors import DriverError, StoreError
from hvcluster.models.event import Say
from hvcluster.models.job import Job, job_of
from hvcluster.models.lifecycle import MigrationState
from hvcluster.models.vm import VMSpec
from hvcluster.store.base import Store
from hvcluster.store.checkpoints import OpChange, change_op, fail_op, list_put, read_ops
from hvcluster.store.keys import Keys
from hvcluster.store.reads import decode_kv

log = logging.getLogger(__name__)

_M = MigrationState
RETAIN_S = 86400.0  # finished records are kept this long
_DONE = {
    CheckpointAction.CREATE: ("checkpoint.created", "created"),
    CheckpointAction.REVERT: ("checkpoint.reverted", "reverted to"),
    CheckpointAction.DELETE: ("checkpoint.deleted", "deleted"),
}


class CheckpointWorker(OwnedJobs):
    what = "checkpoint"
    retain_s = RETAIN_S

    def __init__(self, store: Store, keys: Keys, agent: NodeAgent, say: Say) -> None:
        super().__init__(store, keys, agent, say, keys.checkpoint_op())

    async def cycle(self) -> None:
        self.forget_ended_tasks()
        found = await read_ops(self.store, self.keys)
        for oid, stored in sorted(found.items.items()):
            op = stored.value
            if not op.active:  # any node's: the agent of a node removed since never would
                await self.prune_if_old(self.keys.checkpoint_op(oid), op, stored.mod_revision)
            elif op.node != self.me:
                continue
            elif op.state is _M.REQUESTED and oid not in self.tasks:
                self.tasks[oid] = asyncio.create_task(self._run(op), name=f"checkpoint-{oid}")
            elif op.state is _M.PREPARING and oid not in self.tasks:
                why = f"the agent on {self.me} restarted during it; the list says what is kept"
                await fail_op(self.store, self.keys, self.say, op, why)
                await self._refresh(op.vm)

    async def _run(self, op: CheckpointOp) -> None:
        try:
            spec = await self._accept(op)
            found = await self.driver.checkpoint(spec, op.action, op.name)
            listed = CheckpointList(
                vm=op.vm,
                uid=spec.uid,
                checkpoints=tuple(found),
                node=self.me,
                updated=self.agent.clock.wall(),
            )
            done = await change_op(
                self.store, self.keys, op.id, _to(_M.DONE), ops=[list_put(self.keys, listed)]
            )
            if done is None:
                return  # failed meanwhile (the controller: the VM was placed elsewhere)
            kind, verb = _DONE[op.action]
            memory = ""
            if op.action is not CheckpointAction.DELETE:
                cp = listed.find(op.name)
                memory = " with its memory" if cp is not None and cp.memory else " (disks only)"
            said = f"vm {op.vm}: {verb} checkpoint {op.name!r}{memory} on {self.me} ({op.id})"
            await self.say(kind, f"vm/{op.vm}", said)
        except (JobFailed, DriverError, StoreError, TimeoutError) as e:
            await fail_op(self.store, self.keys, self.say, op, str(e))
            await self._refresh(op.vm)
        except Exception as e:  # a bug: this operation fails with it, the agent goes on
            log.exception("checkpoint operation %s", op.id)
            why = f"unexpected error on {self.me}: {type(e).__name__}: {e}"
            await fail_op(self.store, self.keys, self.say, op, why)

    async def _accept(self, op: CheckpointOp) -> VMSpec:
        """Step 1's checks; the operation moves to preparing. Returns the spec the driver
        acts on: the one the VM runs with here, else (stopped) the stored one."""
        spec = await self.read.spec(op.vm)
        placement = await self.read.placement(op.vm)
        if spec is None:
            raise JobFailed(f"vm {op.vm} was deleted")
        where = (placement.node, placement.epoch) if placement is not None else ("", 0)
        if where != ((self.me, op.epoch) if op.epoch else ("", 0)):
            now = f"placed on {where[0]}" if where[0] else "placed nowhere"
            raise JobFailed(f"vm {op.vm} is now {now}, not as when the operation was asked")
        kv = await self.store.get(self.keys.job(op.vm))
        job = decode_kv(Job, kv) if kv is not None else None
        if job is None or job.value != job_of(op):
            raise JobFailed(f"vm {op.vm}: its job key does not name this operation")
        if await change_op(self.store, self.keys, op.id, _to(_M.PREPARING)) is None:
            raise JobFailed("the operation ended before it began")
        try:
            return await self.driver.running_spec(op.vm)
        except NotRunning:
            return spec

    def _listed(self, spec: VMSpec, found: Sequence[Checkpoint]) -> CheckpointList:
        now = self.agent.clock.wall()
        return CheckpointList(
            vm=spec.name, uid=spec.uid, checkpoints=tuple(found), node=self.me, updated=now
        )

    async def _refresh(self, vm: str) -> None:
        """Write what the VM's disks hold now (best effort: after a failure)."""
        try:
            spec = await self.read.spec(vm)
            if spec is None:
                return
            with contextlib.suppress(NotRunning):
                spec = await self.driver.running_spec(vm)
            found = await self.driver.checkpoints(spec)
            listed = CheckpointList(
                vm=vm,
                uid=spec.uid,
                checkpoints=tuple(found),
                node=self.me,
                updated=self.agent.clock.wall(),
            )
            await self.store.txn([], [list_put(self.keys, listed)])
        except (DriverError, StoreError, TimeoutError) as e:
            log.warning("vm %s: checkpoints not read again: %s", vm, e)


def _to(state: MigrationState) -> OpChange:
    def change(cur: CheckpointOp) -> CheckpointOp | None:
        if not cur.active:
            return None
        return cur.model_copy(update={"state": state})

    return change
