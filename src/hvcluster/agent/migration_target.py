"""This host as a migration's target: prepare the incoming copy, run it once the placement
has flipped to us, or discard it when the migration failed.

The resume is the guest-visible part of a migration: the watch event that shows the record
done (the transaction that wrote it flipped the placement to us) runs the VM at once, with no
store read before ``cont``; the times are recorded afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from hvcluster.agent.guestcpu import guest_spec
from hvcluster.agent.migration_quick import QuickState
from hvcluster.agent.shared_nothing import shared_nothing
from hvcluster.drivers.base import VMInfo
from hvcluster.drivers.errors import NotRunning
from hvcluster.models.errors import DriverError
from hvcluster.models.lifecycle import MigrationState, VMState
from hvcluster.models.migration import (
    Migration,
    MigrationKind,
    needs_running,
    sized_as_running,
)
from hvcluster.models.migration_times import done_sentence, with_times
from hvcluster.store.migrations import change_migration
from hvcluster.store.state import read_config

log = logging.getLogger(__name__)

_M = MigrationState
RECENT_S = 300.0  # a done record older than this no longer makes a paused target resume
SETTLE_S = 30.0  # how long a target waits for its driver to see an incoming stream end
SETTLE_POLL_S = 0.001  # the guest is paused meanwhile: look often (it is a moment at most)


class TargetRole(QuickState):
    async def _as_target(self, rec: Migration) -> None:
        busy = rec.id in self.tasks
        if rec.state is _M.PREPARING and not rec.target_ready and not busy:
            if rec.vm in self.migrated_out or not self.shared.ready_to_prepare(rec):
                return  # our paused copy from its last move here is not discarded yet
            if needs_running(rec) and rec.running is None:
                return  # the source has not said yet which size the guest runs with
            self._spawn(rec, self._prepare(rec))
        elif rec.state is _M.TRANSFERRING and rec.saved_path and not rec.state_verified:
            if not busy:  # quick: the source saved the state; can we read it?
                self._spawn(rec, self._verify_state(rec))
        elif rec.state is _M.DONE and not busy:
            if self.agent.clock.wall() - rec.updated < RECENT_S or rec.vm in self.agent.incoming:
                self._spawn(rec, self._take_over(rec))
            else:
                self.finished.add(rec.id)
        elif rec.state in (_M.FAILED, _M.CANCELLED):
            if busy:
                self.tasks[rec.id].cancel()
                return
            await self._discard_incoming(rec)
            self.finished.add(rec.id)

    def _fast_take_over(self, rec: Migration) -> bool:
        """A record just became done with us as its target: run the VM now, without waiting
        for the next cycle (the guest is paused until we do). True if it was ours to run."""
        if (
            rec.state is _M.DONE
            and rec.target == self.me
            and rec.vm in self.agent.incoming
            and rec.id not in self.tasks
            and rec.id not in self.finished
        ):
            # the transaction that made the record done flipped the placement to us
            self._quiet()
            self._spawn(rec, self._take_over(rec, flipped=True))
            return True
        return False

    async def _prepare(self, rec: Migration) -> None:
        self.agent.incoming.add(rec.vm)
        spec = await self.read.spec(rec.vm)
        try:
            if spec is None:
                raise DriverError(f"vm {rec.vm} has no spec")
            why_not = self.agent.may_start()  # e.g. its watchdog does not acknowledge feeding
            if why_not is not None:
                raise DriverError(f"{self.me} starts no VM now: {why_not}")
            if not shared_nothing(rec):
                await self.agent.disks.check(spec)  # its files as this host resolves them
            if rec.kind is MigrationKind.QUICK:
                await self._prepare_state(rec)  # its state comes by a file: nothing to start
                return
            spec = sized_as_running(spec, rec)  # not as edited since it started
            spec = guest_spec(spec, self.agent.facts, rec.cpu_model)  # the model it runs with
            config, _ = await read_config(self.store, self.keys)
            if shared_nothing(rec):  # its disks come too: made here, served to the source
                address = await self.shared.prepare(rec, spec, config.migration)
            else:
                address = await self.driver.prepare_incoming(
                    spec, rec.epoch + 1, self.agent.me.migration_host, config.migration
                )
        except DriverError as e:
            await self._fail(rec, f"target {self.me} could not prepare: {e}")
            await self._discard_incoming(rec)
            return

        if not await self._while_preparing(rec, "target_address", address):
            await self._discard_incoming(rec)  # cancelled or failed meanwhile

    async def _take_over(self, rec: Migration, flipped: bool = False) -> None:
        """The placement flipped to us: run the VM (resume it, or restore it from its file).
        ``flipped``: the record was seen becoming done just now, so the placement is ours
        (the same transaction wrote both); otherwise it is read and checked first."""
        epoch = rec.epoch + 1
        placement = None if flipped else await self.read.placement(rec.vm)
        if not flipped and (
            placement is None or placement.node != self.me or placement.epoch != epoch
        ):
            await self._discard_incoming(rec)  # moved on since; not ours
            self.finished.add(rec.id)
            return
        try:
            if rec.kind is MigrationKind.QUICK:
                await self._restore(rec, epoch)
            else:
                await self._resume(rec, epoch)
        except DriverError as e:
            await self._did_not_run(rec, "migration.resume_failed", f"{e}")
        finally:
            self.shared.keep_created(rec)  # the spec names them now
            self.agent.incoming.discard(rec.vm)
            self.finished.add(rec.id)
            self.agent.quiet_until = 0.0
            self.agent.wake.set()

    async def _resume(self, rec: Migration, epoch: int) -> None:
        """Run the incoming VM. If the driver refuses (a disk lock the source kept longer
        than the driver waits, say), once more when its state is all here: the source has
        let go of everything by then. Left so, it would stay paused here for good, the
        placement ours and no one to run it (both ends of a postcopy alike)."""
        try:
            await self._resume_once(rec, epoch)
        except DriverError as e:
            why = f"{e}; trying again once its state is all here"
            await self._did_not_run(rec, "migration.resume_retried", why)
            await self._settled(rec.vm)
            await self._resume_once(rec, epoch)

    async def _did_not_run(self, rec: Migration, kind: str, why: str) -> None:
        log.warning("migration %s: %s did not run here: %s", rec.id, rec.vm, why)
        await self.say(
            kind, f"vm/{rec.vm}", f"vm {rec.vm} moved to {self.me} but did not run here: {why}"
        )

    async def _resume_once(self, rec: Migration, epoch: int) -> None:
        info = await self.driver.status(rec.vm)
        if info.epoch == epoch and info.state is VMState.MIGRATING:
            try:
                # the driver runs it the moment its state is loaded, if it can
                await self._record_times(
                    rec, _ran_at(await self.driver.resume(rec.vm), self.agent.clock.wall())
                )
                return
            except NotRunning:
                info = await self._settled(rec.vm)  # it cannot: wait until it is loaded
        if info.epoch == epoch and info.state is VMState.PAUSED:
            await self._record_times(
                rec, _ran_at(await self.driver.resume(rec.vm), self.agent.clock.wall())
            )
        elif info.state is not VMState.RUNNING:
            raise DriverError(f"it is {info.state.value} at epoch {info.epoch}")

    async def _settled(self, vm: str, timeout: float = SETTLE_S) -> VMInfo:
        """The incoming VM's state once the driver has seen the end of the stream (the
        source may report completion a moment before the target's QEMU does)."""
        clock = self.agent.clock
        end = clock.now() + timeout
        while True:
            info = await self.driver.status(vm)
            if info.state is not VMState.MIGRATING or clock.now() > end:
                return info
            await clock.sleep(SETTLE_POLL_S)

    async def _restore(self, rec: Migration, epoch: int) -> None:
        with contextlib.suppress(DriverError):
            info = await self.driver.status(rec.vm)
            if info.epoch == epoch and info.state not in (VMState.STOPPED, VMState.FAILED):
                return  # restored already
        spec = await self.read.spec(rec.vm)
        if spec is None:
            return
        path = self._state_path(rec.saved_path)
        spec = sized_as_running(spec, rec)  # the size it was saved with
        spec = guest_spec(spec, self.agent.facts, rec.cpu_model)  # the model it was saved with
        resumed = _ran_at(await self.driver.restore(spec, epoch, path), self.agent.clock.wall())
        with contextlib.suppress(OSError):
            await asyncio.to_thread(path.unlink)
        await self._record_times(rec, resumed)

    async def _record_times(self, rec: Migration, resumed: float) -> None:
        """When the VM ran here, into the record; with QEMU's part of the downtime (the
        source writes it once the VM runs here) that makes the downtime as the guest saw it
        (paused on the source until running here), said in ``migration.done`` by whichever
        of the two writes second."""
        log.info(
            "migration %s: resumed %s here %.1f ms after its transfer completed",
            rec.id,
            rec.vm,
            (resumed - rec.switching_at) * 1000,
        )

        def record(cur: Migration) -> Migration | None:
            if cur.resumed_at:
                return None
            return with_times(cur.model_copy(update={"resumed_at": resumed}))

        written = await change_migration(
            self.store, self.keys, rec.id, record, now=self.agent.clock.wall()
        )
        if written is not None and written.downtime_ms is not None:
            self.agent.metrics.migration_done(written.kind, written.total_ms, written.downtime_ms)
            await self.say("migration.done", f"vm/{rec.vm}", done_sentence(written))

    async def _discard_incoming(self, rec: Migration) -> None:
        """Drop the copy prepared here for ``rec``: it never ran. Even when a failover has
        since placed the VM here at that same epoch (its source died mid-migration), the
        reconcile then starts it afresh rather than adopt a half-received copy."""
        if rec.vm in self.agent.incoming or rec.id in self.tasks:
            try:
                info = await self.driver.status(rec.vm)
            except DriverError:
                info = None
            if (
                info is not None
                and info.epoch == rec.epoch + 1
                and info.state is not VMState.RUNNING
            ):
                await self.driver.discard(rec.vm)
        await self.shared.delete_created(rec)  # a shared-nothing copy's files, if unused
        self.agent.incoming.discard(rec.vm)
        self.agent.wake.set()


def _ran_at(info: VMInfo, now: float) -> float:
    """When the driver saw the VM start running (its state's ``since``: for QEMU when it
    said RESUME, which may come before ``resume`` returns to this busy loop); ``now`` (the
    agent's clock) if that is not a plausible wall clock."""
    if info.state is VMState.RUNNING and now - 60 < info.since <= now:
        return info.since
    return now
