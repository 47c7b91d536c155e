"""The agent's part of migrations: this host as the target or the source of a move.

The protocol (``migrations/<id>``; the controller's part in
:mod:`hvcluster.controller.migrations`):

* controller, on ``requested``: picks the target if none was asked for, ``preparing``;
* target, on ``preparing``: takes the VM into :attr:`NodeAgent.incoming` (its reconcile then
  leaves it alone), starts it paused waiting for the transfer (``prepare_incoming`` at epoch
  + 1; a quick migration only names the state file) and writes ``target_address``;
* source, on seeing the address: ``transferring``, runs ``migrate_out`` (or ``save``),
  publishing progress every :data:`~hvcluster.agent.migration_source.PROGRESS_EVERY` s; the
  moment QEMU reports completion it flips the placement to the target (epoch + 1) and marks
  the record ``done`` in one transaction; if it cannot, ``switching`` and the controller
  flips or fails it;
* target, on ``done`` with the placement flipped to it: ``resume`` (or ``restore``) straight
  from the watch event (a QEMU still loading the last of the state runs the moment it is
  loaded), then writes ``resumed_at``;
* source, on ``resumed_at`` (or after :data:`~hvcluster.agent.migration_source.HOLD_S`):
  writes QEMU's measures, discards its paused copy (held out of its reconcile until then, so
  that nothing here competes with the target's resume) and says ``migration.switched``;
  whichever of the two writes second completes ``downtime_ms`` and says ``migration.done``.

Any failure or cancel before the flip: the target discards its copy, the source keeps (or
resumes) the VM. Never two running: the target resumes only after the flip is committed, and
the source resumes only when the record failed while the placement is still its own.
"""

from __future__ import annotations

import logging

from hvcluster.agent.migration_source import SourceRole
from hvcluster.agent.migration_target import TargetRole
from hvcluster.agent.shared_nothing import shared_nothing
from hvcluster.models.errors import StoreError
from hvcluster.models.lifecycle import MigrationState
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.store.base import WatchEvent
from hvcluster.store.follow import follow, run_cycles
from hvcluster.store.migrations import read_migrations
from hvcluster.store.reads import decode_kv

log = logging.getLogger(__name__)


class MigrationWorker(TargetRole, SourceRole):
    """Both roles, one cycle. An unexpected exception in one record's step is that record's
    failure (see :meth:`_step_broke`), never the worker's: the agent and its VMs go on."""

    async def run(self, interval: float = 1.0) -> None:
        # (an error of one record's step is caught in the cycle: this is the cycle's own)
        await run_cycles("migration", self.cycle, self.wake, interval, self.agent.clock.sleep)

    async def watch(self) -> None:
        def seen(event: WatchEvent) -> None:
            try:
                found = decode_kv(Migration, event)
                rec = found.value if found is not None else None
                if rec is None:
                    self.wake.set()
                    return
                self._state_changed(rec)  # quick: a source waits for the target's check
                if rec.id in self.flipped and not rec.resumed_at:
                    pass  # our own flip: nothing to do here until the target has run the VM
                elif self._transferring_live(rec):
                    pass  # nothing to do here until it ends (see _transferring_live)
                elif self.me in (rec.source, rec.target) and not self._fast_take_over(rec):
                    self.wake.set()  # (a take-over wakes the cycle when it has run the VM)
            except Exception:  # the watch must go on; the cycle sees the record anyway
                log.exception("migration watch: event on %s", event.key)
                self.wake.set()

        await follow(self.store, self.keys.prefix("migrations"), seen, sleep=self.agent.clock.sleep)

    def _transferring_live(self, rec: Migration) -> bool:
        """``rec`` is a live transfer under way between this host and another, and neither
        end has anything to do until it ends: the source's own task runs it (its writes of
        ``transferring`` and of progress come back here), the target waits for ``done``.
        A cycle woken for it would only read every record while the two QEMUs need the
        CPU for the guest's last pages. (Quick and shared-nothing moves have steps during
        the transfer; a source whose task is not running is judged by the next cycle.)"""
        if rec.state is not MigrationState.TRANSFERRING or rec.kind is not MigrationKind.LIVE:
            return False
        if shared_nothing(rec):
            return False
        return rec.target == self.me or (rec.source == self.me and rec.id in self.tasks)

    async def cycle(self) -> None:
        self.cycles += 1
        for task_id in [t for t, task in self.tasks.items() if task.done()]:
            self.tasks.pop(task_id)
        records = await read_migrations(self.store, self.keys)
        for mid, stored in sorted(records.items.items()):
            rec = stored.value
            if mid in self.finished:
                continue
            try:
                if rec.target == self.me:
                    await self._as_target(rec)
                if rec.source == self.me:
                    await self._as_source(rec)
            except (StoreError, TimeoutError):
                raise  # the store, not the record: the next cycle tries again
            except Exception as e:
                await self._step_broke(rec, e)

    async def _step_broke(self, rec: Migration, error: Exception) -> None:
        """One record's step raised unexpectedly. Under way: the record fails with the
        reason (its failed path runs next cycle: the source keeps its VM, the target drops
        its copy). Failed or done already, or its failed path broke too: this host gives the
        record up, said once, and leaves what remains of it to its reconcile (which kills
        what is not placed here). Either way it is never retried as it was: no crash loop."""
        errors = self.errors[rec.id] = self.errors.get(rec.id, 0) + 1
        if rec.active and errors == 1:
            await self._broke(rec, error)
            return
        log.error("migration %s: given up on %s", rec.id, self.me, exc_info=error)
        self.finished.add(rec.id)
        self.flipped.discard(rec.id)
        if self.migrated_out.get(rec.vm) == rec.id:
            self.migrated_out.pop(rec.vm)
        self.agent.incoming.discard(rec.vm)
        self.agent.wake.set()
        why = f"unexpected error on {self.me}: {type(error).__name__}: {error}"
        await self.say(
            "migration.error",
            f"vm/{rec.vm}",
            f"migration {rec.id} ({rec.state.value}): {why}; {self.me} gives it up and "
            f"its reconcile takes over",
        )
