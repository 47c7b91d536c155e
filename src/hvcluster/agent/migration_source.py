"""This host as a migration's source: run the transfer, publish its progress, and end it.

The end is this host's to write: the moment QEMU reports the transfer complete (a MIGRATION
event, no polling), one transaction flips the placement to the target at epoch + 1 and marks
the record done (:func:`hvcluster.store.migrations.flip`), compared against the record as
this host last wrote it and the placement as read before the transfer, both nodes alive and
the VM present. If that transaction fails (something compared changed, or the store did not
answer), the record goes to ``switching`` and the controller decides: flip or fail. If the
record was cancelled or failed meanwhile, the paused copy here runs again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from hvcluster.agent.migration_quick import NotVerified, QuickState
from hvcluster.agent.shared_nothing import shared_nothing
from hvcluster.drivers.errors import MigrationCancelled, PostcopyFailed
from hvcluster.models.base import encode
from hvcluster.models.errors import DriverError, StoreError
from hvcluster.models.fit import not_up
from hvcluster.models.lifecycle import MigrationState, VMState
from hvcluster.models.migration import (
    Migration,
    MigrationKind,
    Progress,
    RunningSize,
    address_host,
    needs_running,
    settings_for,
)
from hvcluster.models.migration_times import (
    done_sentence,
    source_times_lost,
    times_missing,
    with_times,
)
from hvcluster.models.node import Node
from hvcluster.models.vm import Placement
from hvcluster.store.base import Compare, Put
from hvcluster.store.migrations import change_migration, change_record, flip, moved_spec_ops
from hvcluster.store.reads import Stored, read_one
from hvcluster.store.state import read_config
from hvcluster.tasks import wait_event

log = logging.getLogger(__name__)

_M = MigrationState
PROGRESS_EVERY = 0.5  # seconds between progress writes into the record
HOLD_S = 5.0  # the paused copy here waits at most this long for the target to run the VM


@dataclass
class Written:
    """The record as this host last wrote it, and its mod revision (what the flip compares)."""

    record: Migration
    revision: int
    writing: bool = False  # a progress write is under way


class SourceRole(QuickState):
    async def _as_source(self, rec: Migration) -> None:
        busy = rec.id in self.tasks
        if shared_nothing(rec) and rec.state in (_M.REQUESTED, _M.PREPARING):
            await self.shared.publish_sizes(rec)  # the target waits for them (once)
        if needs_running(rec) and rec.state in (_M.REQUESTED, _M.PREPARING):
            await self._publish_running(rec)  # the target waits for it (once)
        if rec.state is _M.PREPARING and rec.target_ready and not busy:
            if not self._still_moving(rec):
                self._spawn(rec, self._transfer(rec))
        elif rec.state is _M.TRANSFERRING and not busy:
            # Our transfer is not running (this agent restarted): it cannot finish.
            with contextlib.suppress(DriverError):
                await self.driver.cancel_migration(rec.vm)
            await self._fail(rec, f"the source agent on {self.me} restarted mid-migration")
        elif rec.state in (_M.FAILED, _M.CANCELLED):
            if busy:
                if rec.id not in self.cancelled:
                    self.cancelled.add(rec.id)
                    with contextlib.suppress(DriverError):
                        await self.driver.cancel_migration(rec.vm)
                return
            await self._keep_running(rec)
            await self._drop_state(rec)
            self.shared.forget(rec)
            self.finished.add(rec.id)
            self.wake.set()  # a later move of the same VM may have waited for this one
        elif rec.state is _M.DONE and not busy:
            held = rec.id in self.flipped and self.migrated_out.get(rec.vm) == rec.id
            if held and not rec.resumed_at and self.agent.clock.wall() - rec.switching_at < HOLD_S:
                return  # the target is resuming it: nothing here meanwhile, not even a write
            if rec.id in self.times:
                rec = await self._add_times(rec, self.times.pop(rec.id))
            elif rec.id not in self.flipped and times_missing(rec):
                # Flipped by this host's agent before a restart: QEMU's measures went with it.
                if not rec.resumed_at and self.agent.clock.wall() - rec.switching_at < HOLD_S:
                    return  # the target is about to write when it ran the VM: wait for it
                rec = await self._times_lost(rec)
            self.migrated_out.pop(rec.vm, None)
            placement = await self.read.placement(rec.vm)
            if placement is not None and placement.node != self.me:
                await self.driver.discard(rec.vm)
                await self.shared.delete_old_files(rec)  # shared-nothing: the copy is there
            if held:
                self.agent.incoming.discard(rec.vm)
                self.agent.wake.set()
                await self._said_switched(rec)
            self.flipped.discard(rec.id)
            self.finished.add(rec.id)

    def _still_moving(self, rec: Migration) -> bool:
        """An earlier move of ``rec``'s VM is still ending here (its transfer being
        cancelled, or its paused copy not yet run again after a failed flip): ``rec`` waits
        for it, as QEMU would refuse a second transfer (woken when that one ends)."""
        if self.migrated_out.get(rec.vm, rec.id) != rec.id:
            return True
        return any(vm == rec.vm and mid != rec.id for mid, vm in self.task_vms.items())

    async def _publish_running(self, rec: Migration) -> None:
        """The size the guest runs with here into the record, once: the target builds the
        incoming VM from it, not from the spec as edited since the VM started (that edit
        waits for its next cold start). A VM this host does not run cannot move: failed."""
        try:
            size = RunningSize.of(await self.driver.running_spec(rec.vm))
        except DriverError as e:
            await self._fail(rec, f"{rec.vm} does not run on {self.me}: {e}")
            return

        def put(cur: Migration) -> Migration | None:
            if cur.running is not None or not cur.active:
                return None
            return cur.model_copy(update={"running": size})

        await change_migration(self.store, self.keys, rec.id, put, now=self.agent.clock.wall())

    async def _transfer(self, rec: Migration) -> None:
        def start(cur: Migration) -> Migration | None:
            if cur.state is not _M.PREPARING or not cur.target_ready:
                return None
            return cur.model_copy(update={"state": _M.TRANSFERRING})

        started = await change_record(
            self.store, self.keys, self.keys.migration(rec.id), start, now=self.agent.clock.wall()
        )
        if started is None:
            return
        written = Written(*started)
        address = written.record.target_address
        # what the flip compares, read beforehand: the target's node record too (an admin
        # who pauses or drains it meanwhile fails the flip; the controller then fails the
        # move, and the VM runs here again)
        target = await read_one(self.store, self.keys.node(rec.target), Node)
        refused = self._refused(written.record, target.value if target else None)
        if refused is not None:
            await self._fail(rec, refused)
            return
        assert target is not None  # (refused otherwise)
        placed = await read_one(self.store, self.keys.placement(rec.vm), Placement)
        spec_compares, spec_puts = await moved_spec_ops(self.store, self.keys, rec)
        as_read = Compare.mod_is(self.keys.node(rec.target), target.mod_revision)
        moved = ([*spec_compares, as_read], spec_puts)  # (shared-nothing: its new disk paths)
        config, _ = await read_config(self.store, self.keys)
        settings = settings_for(written.record, config.migration)  # its own cap, if any
        latest: list[Progress] = []
        stop = asyncio.Event()
        publisher = asyncio.create_task(self._publish(written, latest, stop))
        tried: list[bool] = []  # the flip was tried from the driver's completion hook

        async def completed(at: float) -> None:
            """The guest is paused and its state is all sent: flip now, before anything else
            (QEMU's own measures are asked for and recorded afterwards)."""
            self._quiet()
            await self._stop_publishing(written, stop, publisher)
            self.migrated_out[rec.vm] = rec.id
            progress = latest[-1] if latest else written.record.progress
            tried.append(
                await self._flip(written, placed, moved, progress=progress, switching_at=at)
            )

        self.agent.moving_out.add(rec.vm)  # (its state changes wake no reconcile meanwhile)
        try:
            if rec.kind is MigrationKind.QUICK:  # to the volume the target checked it sees
                path = self._state_path(written.record.state_file)
                await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
                result = await self.driver.save(rec.vm, path)
                saved = written.record.state_file
            elif shared_nothing(rec):  # the disks first, into the target's exports
                result = await self.shared.migrate_out(
                    written.record, address, settings, latest.append, completed
                )
                saved = ""
            else:
                result = await self.driver.migrate_out(
                    rec.vm, address, settings, latest.append, completed
                )
                saved = ""
        except (DriverError, OSError) as e:
            if isinstance(e, PostcopyFailed):  # both copies are gone: failover restarts it
                await self.say("migration.postcopy_failed", f"vm/{rec.vm}", f"{rec.id}: {e}")
            if not isinstance(e, MigrationCancelled):
                await self._fail(rec, f"transfer from {self.me} to {rec.target} failed: {e}")
            return
        except Exception:
            # A bug mid-transfer (the record fails with it, see _spawn): stop whatever the
            # driver still does, and let the failed record's path run the copy here again
            # if it is paused (only at this record's epoch, while placed here).
            if rec.id not in self.flipped:
                with contextlib.suppress(Exception):
                    await self.driver.cancel_migration(rec.vm)
                self.migrated_out[rec.vm] = rec.id
            raise
        finally:
            self.agent.moving_out.discard(rec.vm)  # (_spawn wakes the loop, unless flipped)
            await self._stop_publishing(written, stop, publisher)
        self.migrated_out[rec.vm] = rec.id
        saved_at = self.agent.clock.wall()
        if rec.kind is MigrationKind.QUICK:
            try:  # the target must read the state before the placement flips
                written.record, written.revision = await self._saved_and_verified(rec)
            except NotVerified as e:
                log.info("migration %s: %s; %s runs here again", rec.id, e, rec.vm)
                return  # failed or cancelled: the cycle runs the paused copy here again
        times: dict[str, Any] = {
            "progress": result.progress,
            "transfer_downtime_ms": result.downtime_ms,
            "transfer_ms": result.total_ms,
            "saved_path": saved,
        }
        if tried == [True]:
            self.times[rec.id] = times  # written once the target runs the VM
            return
        times["switching_at"] = result.completed_at or saved_at
        if not tried and await self._flip(written, placed, moved, **times):
            return

        def switching(cur: Migration) -> Migration | None:
            if cur.state is not _M.TRANSFERRING:
                return None
            return cur.model_copy(update={**times, "state": _M.SWITCHING})

        log.info("migration %s: could not flip; the controller decides", rec.id)
        # None: cancelled or failed meanwhile (the cycle runs the paused copy here again),
        # or done: the flip landed after all
        await change_migration(
            self.store, self.keys, rec.id, switching, now=self.agent.clock.wall()
        )

    async def _stop_publishing(
        self, written: Written, stop: asyncio.Event, publisher: asyncio.Task[None]
    ) -> None:
        stop.set()
        if not written.writing:
            publisher.cancel()  # idle: no need to wait for it to wake
        # a progress write under way lands first: the flip compares after it
        with contextlib.suppress(asyncio.CancelledError, StoreError):
            await publisher

    async def _flip(
        self,
        written: Written,
        placed: Stored[Placement] | None,
        moved: tuple[list[Compare], list[Put]],
        **fields: Any,
    ) -> bool:
        """The transfer completed (the guest is paused): the flip, in one transaction. False
        if it did not happen (something compared changed, or the store did not answer)."""
        rec = written.record
        if placed is None:
            return False
        done = None
        # Until the target runs it, this host's reconcile leaves the paused copy alone (the
        # flip moves the placement away; killing it now would only take CPU from the
        # target, which is loading the last of the guest's state).
        self.agent.incoming.add(rec.vm)
        try:
            at = written.revision
            placement, placement_rev = placed.value, placed.mod_revision
            done = await flip(
                self.store,
                self.keys,
                rec,
                at,
                placement,
                placement_rev,
                moved,
                **fields,
                now=self.agent.clock.wall(),
            )
        except StoreError as e:
            log.warning("migration %s: the flip got no answer (%s); re-checking", rec.id, e)
        finally:
            if done is None:
                self.agent.incoming.discard(rec.vm)
        if done is None:
            return False
        self.flipped.add(rec.id)
        log.info(
            "migration %s: flipped %s to %s %.1f ms after its transfer completed",
            rec.id,
            rec.vm,
            rec.target,
            (self.agent.clock.wall() - done.switching_at) * 1000,
        )
        return True  # said, and the copy here discarded, once the target runs it

    async def _add_times(self, rec: Migration, times: dict[str, Any]) -> Migration:
        """QEMU's measures of a transfer this host flipped, into the done record (with the
        target's ``resumed_at``, if there, they make the downtime: said then)."""

        def add(cur: Migration) -> Migration | None:
            if cur.state is not _M.DONE or cur.transfer_downtime_ms is not None:
                return None
            return with_times(cur.model_copy(update=times))

        written = await change_migration(
            self.store, self.keys, rec.id, add, now=self.agent.clock.wall()
        )
        if written is not None and written.downtime_ms is not None:
            self.agent.metrics.migration_done(written.kind, written.total_ms, written.downtime_ms)
            await self.say("migration.done", f"vm/{rec.vm}", done_sentence(written))
        return written or rec.model_copy(update=times)

    async def _times_lost(self, rec: Migration) -> Migration:
        """A done record this host flipped before its agent restarted: QEMU's measures of
        the transfer are gone, so the downtime stays unknown (said why); the total comes
        from the target's ``resumed_at``. The paused copy is discarded by the caller."""
        why = (
            f"the source agent on {self.me} restarted after the flip, before it wrote QEMU's "
            f"measures of the transfer"
        )

        def mark(cur: Migration) -> Migration | None:
            return source_times_lost(cur, why) if times_missing(cur) else None

        written = await change_migration(
            self.store, self.keys, rec.id, mark, now=self.agent.clock.wall()
        )
        if written is not None:
            self.agent.metrics.migration_done(written.kind, written.total_ms, written.downtime_ms)
            await self.say("migration.done", f"vm/{rec.vm}", done_sentence(written))
        return written or rec

    async def _said_switched(self, rec: Migration) -> None:
        qemu = rec.transfer_downtime_ms or 0.0
        await self.say(
            "migration.switched",
            f"vm/{rec.vm}",
            f"vm {rec.vm} {rec.kind.value} migration {rec.id} from {self.me} to {rec.target}: "
            f"transfer complete (QEMU downtime {qemu:.0f} ms), placement flipped to epoch "
            f"{rec.epoch + 1} by the source; its paused copy here discarded",
        )

    async def _publish(self, written: Written, latest: list[Progress], stop: asyncio.Event) -> None:
        """Progress into the record every :data:`PROGRESS_EVERY` seconds until ``stop``;
        ``written`` follows each write (the flip compares the last one)."""
        key = self.keys.migration(written.record.id)
        last: Progress | None = None
        while not stop.is_set():
            await wait_event(stop, PROGRESS_EVERY, self.agent.clock.sleep)
            if stop.is_set() or not latest or latest[-1] == last:
                continue
            progress = latest[-1]
            new = written.record.model_copy(
                update={"progress": progress, "updated": self.agent.clock.wall()}
            )
            written.writing = True
            try:
                result = await self.store.txn(
                    [Compare.mod_is(key, written.revision)], [Put(key, encode(new))]
                )
                if result.succeeded:
                    written.record, written.revision, last = new, result.revision, progress
                    continue

                def put(cur: Migration, p: Progress = progress) -> Migration | None:
                    if cur.state is not _M.TRANSFERRING:
                        return None
                    return cur.model_copy(update={"progress": p})

                # someone else wrote the record (a cancel, say): follow it, or stop
                again = await change_record(
                    self.store,
                    self.keys,
                    self.keys.migration(written.record.id),
                    put,
                    now=self.agent.clock.wall(),
                )
                if again is None:
                    return
                written.record, written.revision = again
                last = progress
            except StoreError as e:
                log.debug("progress of %s not written: %s", written.record.id, e)
            finally:
                written.writing = False

    def _refused(self, rec: Migration, node: Node | None) -> str | None:
        """Why this host will not send ``rec``'s VM to its target ``node`` (as read now):
        not registered, or taking no VMs (paused, draining, quarantined). Nor, for a live
        move, its state to the ``target_address``, nor (shared-nothing) its disks to the
        ``disks_address`` (whoever can write the record could point them anywhere): each
        must be on the target's registered migration address (its ``migration_address``,
        else its address; the model admits only tcp:HOST:PORT for the first, the driver
        reads the host of the second). None if it may go."""
        if node is None:
            return f"the target node {rec.target} is not registered; {rec.vm} stays on {self.me}"
        closed = not_up(node)
        if closed is not None:
            return f"the target node {closed}; {rec.vm} stays on {self.me}"
        if rec.kind is MigrationKind.QUICK:
            return None
        wanted = node.migration_host
        sends = [(repr(rec.target_address), address_host(rec.target_address))]
        if shared_nothing(rec):
            disks = f"its disks at {rec.disks_address!r}"
            try:
                sends.append((disks, self.driver.disks_host(rec.disks_address)))
            except DriverError as e:
                return f"refused to migrate {rec.vm} to {disks}: {e}"
        for where, host in sends:
            if host != wanted:
                return (
                    f"refused to migrate {rec.vm} to {where}: {host} is not {rec.target}'s "
                    f"registered migration address {wanted}"
                )
        return None

    async def _keep_running(self, rec: Migration) -> None:
        """The migration failed: if our copy is paused by its transfer and the placement is
        still ours at the same epoch, run it again."""
        if self.migrated_out.get(rec.vm) != rec.id:
            return
        self.migrated_out.pop(rec.vm, None)
        placement = await self.read.placement(rec.vm)
        if placement is None or placement.node != self.me or placement.epoch != rec.epoch:
            return
        try:
            info = await self.driver.status(rec.vm)
            if info.state is VMState.PAUSED and info.epoch == rec.epoch:
                await self.driver.resume(rec.vm)
                await self.say(
                    "migration.resumed_source",
                    f"vm/{rec.vm}",
                    f"vm {rec.vm} runs on {self.me} again: migration {rec.id} {rec.state.value}",
                )
        except DriverError as e:
            log.warning("could not resume %s after a failed migration: %s", rec.vm, e)
