"""The controller's part of migrations and drains.

For every migration under way it checks the preconditions still hold (the VM still placed
on the source at the record's epoch, both nodes alive, not timed out) and fails the record
with the reason when they do not, and it moves ``requested`` to ``preparing`` with a target
(choosing one with the scheduler's placement rules when none was asked for).

The flip (placement to the target at epoch + 1 and the record ``done``, in one transaction:
:func:`hvcluster.store.migrations.flip`) is normally written by the source agent the moment
its QEMU completes. When it could not (a compare failed, or the store did not answer), the
source moves the record to ``switching`` and this module decides: the same flip from its
watch event, or a failed record with the reason. Only after a flip commits does the target
resume the VM; a record left ``transferring`` by a source that died ends failed (the source
is not alive: normal failover), never flipped.

Drains: :func:`hvcluster.scheduler.drain.plan_drain` decides, and each cycle runs a step of
:class:`hvcluster.controller.drains.Drains` (the migration records, the node paused when done).

It runs as its own loop while this agent leads, woken at once by a new request and, a
moment later, by any other change under ``migrations/`` (those need no haste; the flip does
not wait for it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from hvcluster.controller.drains import Drains
from hvcluster.controller.jobs import sweep_jobs
from hvcluster.controller.notes import ControllerNotes
from hvcluster.controller.retention import Retention
from hvcluster.controller.view import build_snapshot
from hvcluster.metrics import AgentMetrics
from hvcluster.models.errors import StoreError
from hvcluster.models.event import Say
from hvcluster.models.fit import not_up
from hvcluster.models.lifecycle import MigrationState, NodeAdminState
from hvcluster.models.migration import Migration, MigrationKind, state_file_for, state_volume
from hvcluster.models.migration_times import done_sentence, source_times_lost, times_missing
from hvcluster.models.node import Node
from hvcluster.models.storage import spec_on_volume
from hvcluster.models.vm import Placement
from hvcluster.scheduler.compat import move_blockers, vm_model
from hvcluster.scheduler.placement import Choice, Ledger, choose_node
from hvcluster.scheduler.snapshot import ClusterSnapshot
from hvcluster.store.base import Compare, Store, WatchEvent
from hvcluster.store.cache import WatchedCache
from hvcluster.store.follow import follow, run_cycles
from hvcluster.store.keys import Keys
from hvcluster.store.migrations import (
    ATTEMPTS,
    change_migration,
    flip,
    moved_spec_ops,
    read_migrations,
)
from hvcluster.store.reads import DecodeCache, Decoded, Stored, decode_kv, read_kind, read_one
from hvcluster.store.state import ClusterState, cluster_from, read_cluster

log = logging.getLogger(__name__)

_M = MigrationState
SETTLE_S = 30.0  # a requested move waits this long for its VM to be reported running
LATER_S = 0.05  # the cycle runs this long after a change that needs no haste
TIMES_WAIT_S = 10.0  # a done record waits this long for its source's measures (source gone)
TIMES_GIVE_UP_S = 120.0  # ... and this long if its source is alive


class MigrationCoordinator:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        say: Say,
        notes: ControllerNotes,
        is_leader: Callable[[], bool],
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        metrics: AgentMetrics | None = None,
        cache: WatchedCache | None = None,
    ) -> None:
        self.sleep = sleep
        # the controller's watched cache, read instead of the whole cluster (None: read it)
        self.cache = cache
        self.metrics = metrics if metrics is not None else AgentMetrics()
        self.store, self.keys, self.say = store, keys, say
        self.notes, self.is_leader, self.clock = notes, is_leader, clock
        self.wake = asyncio.Event()
        self.said: dict[str, str] = {}  # subject -> last stay reason said
        self.broken: set[str] = set()  # records whose step raised unexpectedly: not again
        self.cycles = 0  # cycles begun (tests wait on it: 'a later cycle did not retry')
        self._later: set[asyncio.Future[None]] = set()  # wake-ups soon, held while due
        self.retention = Retention(store, keys, say, clock)
        self.drains = Drains(store, keys, say, clock, self.said)
        self.decoded = DecodeCache()  # its full reads decode only what changed since the last

    async def run(self, interval: float = 0.5) -> None:
        # (a record's own failure fails that record alone: this is the cycle's own)
        await run_cycles("migration coordinator", self._turn, self.wake, interval, self.sleep)

    async def _turn(self) -> None:
        self.cycles += 1
        if self.is_leader():
            await self.cycle()

    async def watch(self) -> None:

        async def seen(event: WatchEvent) -> None:
            found = decode_kv(Migration, event)
            rec = found.value if found is not None else None
            if rec is None or rec.state is _M.REQUESTED:
                self.wake.set()
            elif rec.state is _M.SWITCHING and self.is_leader():
                self.wake.set()
                # The source could not flip: do it now, the guest is paused until it commits.
                try:
                    await self._switch_fast(rec, event.mod_revision)
                except (StoreError, TimeoutError) as e:
                    log.warning("switch of %s failed: %s; the cycle retries", rec.id, e)
                except Exception:  # the watch goes on; the cycle judges the record
                    log.exception("switch of %s failed unexpectedly; the cycle judges", rec.id)
            elif rec.state in (_M.PREPARING, _M.TRANSFERRING):
                # The agents' own steps (the target's address, the transfer starting, its
                # progress): nothing for the controller to decide, and a cycle now (a full
                # read of the cluster) would take CPU from the two QEMUs moving the guest.
                # What could end it (a node gone, a timeout) the interval's cycle judges.
                pass
            elif not self.wake.is_set():
                # A migration just ended (a drain's next move): soon, not at the very
                # moment a target resumes its guest.
                # (on the controller's clock, a simulation's virtual one included)
                later = asyncio.ensure_future(self._wake_later())
                self._later.add(later)
                later.add_done_callback(self._later.discard)

        await follow(self.store, self.keys.prefix("migrations"), seen, sleep=self.sleep)

    async def _wake_later(self) -> None:
        await self.sleep(LATER_S)
        self.wake.set()

    async def cycle(self) -> None:
        # stale job keys, orphaned moves
        await self._guarded("the job keys' sweep", sweep_jobs(self.store, self.keys, self.say))
        records = await read_migrations(self.store, self.keys)
        await self._guarded("pruning old records", self._prune(records))
        await self._guarded("measures of the sources gone", self._times_lost(records))
        if not any(s.value.active for s in records.items.values()):
            nodes = await read_kind(self.store, self.keys, "nodes", Node)
            if all(
                n.value.admin_state is not NodeAdminState.DRAINING for n in nodes.items.values()
            ):
                return  # nothing to do: spare the store a full read
        if self.cache is not None:
            state = cluster_from(await self.cache.read(), self.keys)
        else:
            state = await read_cluster(self.store, self.keys, self.decoded)
        now = self.clock()
        snapshot = build_snapshot(state, self.notes, now)
        active = [s for s in records.items.values() if s.value.active]
        first: dict[str, str] = {}  # vm -> the id of its oldest migration under way
        for stored in sorted(active, key=lambda s: (s.value.created, s.value.id)):
            rec = stored.value
            if rec.id in self.broken:
                continue
            if first.setdefault(rec.vm, rec.id) != rec.id:
                await self._fail(rec, f"migration {first[rec.vm]} of {rec.vm} is under way")
                continue
            try:
                await self._advance(stored, state, snapshot, records, now)
            except (StoreError, TimeoutError):
                raise  # the store, not the record: the next cycle tries again
            except Exception as e:
                await self._advance_broke(rec, e)
        if any(n.admin_state is NodeAdminState.DRAINING for n in snapshot.nodes.values()):
            await self.drains.step(state, snapshot, await read_migrations(self.store, self.keys))

    async def _guarded(self, what: str, step: Awaitable[None]) -> None:
        """Run a housekeeping ``step`` of the cycle: an unexpected exception in it is logged
        (said once while it repeats) and the cycle goes on to the records under way."""
        try:
            await step
        except (StoreError, TimeoutError):
            raise  # the store: the next cycle tries again
        except Exception as e:
            log.error("migration coordinator: %s", what, exc_info=e)
            why = f"{what} failed: {type(e).__name__}: {e}"
            if self.said.get(what) != why:
                self.said[what] = why
                await self.say("controller.error", "migrations", why)

    async def _prune(self, records: Decoded[Migration]) -> None:
        """Finished records go by age and by count, as the config says (retention.py)."""
        await self.retention.sweep(records)

    async def _times_lost(self, records: Decoded[Migration]) -> None:
        """A done record whose source node went away after its flip, before it wrote QEMU's
        measures of the transfer: the downtime stays unknown (said why), the total comes
        from the target's resume time. The same, later, for one whose source is alive but
        never wrote them. (A source agent that only restarted does this itself.)"""
        now = self.clock()
        waiting = [
            s.value
            for s in records.items.values()
            if times_missing(s.value) and now - s.value.switching_at > TIMES_WAIT_S
        ]
        if not waiting:
            return
        alive = {
            self.keys.name_of(kv.key, "alive")
            for kv in (await self.store.range(self.keys.prefix("alive"))).kvs
        }
        for rec in waiting:
            if rec.source not in alive:
                why = f"the source node {rec.source} went away after the flip, before it "
                why += "wrote QEMU's measures of the transfer"
            elif now - rec.switching_at > TIMES_GIVE_UP_S:
                why = f"the source node {rec.source} never wrote QEMU's measures of the transfer"
            else:
                continue

            def mark(cur: Migration, why: str = why) -> Migration | None:
                return source_times_lost(cur, why) if times_missing(cur) else None

            written = await change_migration(self.store, self.keys, rec.id, mark, now=self.clock())
            if written is not None:
                self.metrics.migration_done(written.kind, written.total_ms, written.downtime_ms)
                await self.say("migration.done", f"vm/{rec.vm}", done_sentence(written))

    # --- one migration ---------------------------------------------------------------
    async def _advance(
        self,
        stored: Stored[Migration],
        state: ClusterState,
        snapshot: ClusterSnapshot,
        records: Decoded[Migration],
        now: float,
    ) -> None:
        rec = stored.value
        why = self._broken(rec, state, now)
        if why is not None:
            await self._fail(rec, why)
        elif rec.state is _M.REQUESTED:
            await self._prepare(rec, snapshot, records)
        elif rec.state is _M.SWITCHING:
            await self._switch(rec, state)

    async def _advance_broke(self, rec: Migration, error: Exception) -> None:
        """An unexpected exception judging ``rec``: logged with its traceback, the record
        failed with the reason (the source keeps its VM, the target drops its copy), and
        never judged again here, so a record that would raise again cannot loop."""
        log.error("migration %s of %s: the controller's step", rec.id, rec.vm, exc_info=error)
        self.broken.add(rec.id)
        await self._fail(
            rec, f"unexpected error in the controller: {type(error).__name__}: {error}"
        )

    def _broken(self, rec: Migration, state: ClusterState, now: float) -> str | None:
        """Why the migration cannot go on, or None."""
        vm = rec.vm
        if vm not in state.vms.items:
            return f"vm {vm} was deleted"
        placed = state.placements.items.get(vm)
        if placed is None:
            return f"vm {vm} has no placement any more"
        p = placed.value
        if p.node != rec.source or p.epoch != rec.epoch:
            return f"vm {vm} is now placed on {p.node} at epoch {p.epoch}, not {rec.source}"
        if rec.source not in state.alive.present:
            return f"the source node {rec.source} is not alive; normal failover takes over"
        if rec.target and rec.target not in state.alive.present:
            return f"the target node {rec.target} is not alive; {vm} stays on {rec.source}"
        target = state.nodes.items.get(rec.target) if rec.target else None
        if rec.state is not _M.REQUESTED and target is not None and not_up(target.value):
            # paused, drained or quarantined since it was chosen: no new VM goes there
            return f"the target node {not_up(target.value)}; {vm} stays on {rec.source}"
        timeout = state.config.migration.timeout_s
        if rec.state is not _M.SWITCHING and now - rec.created > timeout:
            return f"timed out after {timeout:.0f}s in state {rec.state.value}"
        return None

    async def _prepare(
        self, rec: Migration, snapshot: ClusterSnapshot, records: Decoded[Migration]
    ) -> None:
        vm = snapshot.vms.get(rec.vm)
        if vm is None or not vm.is_running_as_placed:
            # Just placed there (by a migration that ended a moment ago, say): its agent may
            # not have reported it running yet. Wait a little, then give up.
            if vm is not None and snapshot.now - rec.created < SETTLE_S:
                return
            state = vm.status.state.value if vm and vm.status else "not reported"
            await self._fail(rec, f"vm {rec.vm} is not running on {rec.source} ({state})")
            return
        ledger = Ledger(snapshot)
        for other in records.items.values():
            o = other.value
            if o.active and o.id != rec.id and o.target and o.vm in snapshot.vms:
                ledger.add(o.target, snapshot.vms[o.vm].spec)
        closed = {
            n.name: why
            for n in snapshot.nodes.values()
            if (why := f"{n.name} is not alive" if not n.alive else not_up(n.node)) is not None
        }
        asked = rec.target
        if asked in closed and rec.requested_by.startswith("drain:"):
            asked = ""  # a drain picked it while it was open: any open node will do now
        exclude = {rec.source: f"{rec.source} is where it runs"}
        if asked:
            exclude.update({n: f"{n} was not asked for" for n in snapshot.nodes if n != asked})
        exclude.update(move_blockers(snapshot, vm, rec.source, rec.kind))  # CPU model, accel
        # shared-nothing: the target needs the volume the disks go to, not the ones they are on
        spec = spec_on_volume(vm.spec, rec.volume) if rec.volume else vm.spec
        # a drain or a balance moves a VM's hard-affinity partners with it: not held there
        leaving = {rec.source} if rec.requested_by.startswith(("drain:", "balance:")) else ()
        choice = choose_node(spec, snapshot, closed, ledger, exclude, leaving)
        if not isinstance(choice, Choice):
            await self._fail(rec, choice.why)
            return
        target, model = choice.node, vm_model(snapshot, vm)  # the target starts QEMU with it
        update: dict[str, object] = {"state": _M.PREPARING, "target": target, "cpu_model": model}
        if rec.kind is MigrationKind.QUICK:  # where the state goes: a volume both see
            volume = state_volume(
                vm.spec, snapshot.nodes[rec.source].node, snapshot.nodes[target].node
            )
            if volume is None:  # (move_blockers excluded such targets)
                await self._fail(rec, f"{rec.source} and {target} share no volume")
                return
            update["state_file"] = state_file_for(volume, rec.vm, rec.id)

        def prepare(cur: Migration) -> Migration | None:
            if cur.state is not _M.REQUESTED:
                return None
            return cur.model_copy(update=update)

        if (
            await change_migration(self.store, self.keys, rec.id, prepare, now=self.clock())
            is not None
        ):
            log.info("migration %s: %s -> %s (%s)", rec.id, rec.source, target, choice.why)

    async def _switch_fast(self, rec: Migration, record_rev: int) -> None:
        """The flip as soon as the record says switching, reading only the placement (it
        must still be the source's, at the record's epoch). Anything else is left to the
        cycle, which fails the record with the reason."""
        placed = await read_one(self.store, self.keys.placement(rec.vm), Placement)
        if placed is None:
            return
        if not await self._flip_at(rec, record_rev, placed):
            await self._flip(rec, placed)  # the record moved since the event: re-read it

    async def _flip_at(self, rec: Migration, record_rev: int, placed: Stored[Placement]) -> bool:
        """The flip against the record exactly as a watch event showed it (``record_rev``):
        one transaction, no re-read but the target's node record (one that takes no VMs
        now fails the record instead). False if anything compared has changed."""
        target = await read_one(self.store, self.keys.node(rec.target), Node)
        closed = not_up(target.value) if target is not None else f"{rec.target} is unregistered"
        if target is None or closed is not None:
            await self._fail(rec, f"the target node {closed}; {rec.vm} stays on {rec.source}")
            return True
        compares, puts = await moved_spec_ops(self.store, self.keys, rec)  # shared-nothing
        as_read = Compare.mod_is(self.keys.node(rec.target), target.mod_revision)
        done = await flip(
            self.store,
            self.keys,
            rec,
            record_rev,
            placed.value,
            placed.mod_revision,
            ([*compares, as_read], puts),
            now=self.clock(),
        )
        if done is not None:
            await self._said_switched(rec, placed.value.epoch + 1)
        return done is not None

    async def _said_switched(self, rec: Migration, epoch: int) -> None:
        ms = rec.transfer_downtime_ms
        qemu = f"{ms:.0f} ms" if ms is not None else "unknown"
        await self.say(
            "migration.switched",
            f"vm/{rec.vm}",
            f"vm {rec.vm} {rec.kind.value} migration {rec.id} from {rec.source} to "
            f"{rec.target}: placement flipped to epoch {epoch} by the controller (the source "
            f"could not); transfer downtime {qemu}",
        )

    async def _switch(self, rec: Migration, state: ClusterState) -> None:
        """The flip: placement to the target at epoch + 1 and the record done, atomically."""
        await self._flip(rec, state.placements.items[rec.vm])

    async def _flip(self, rec: Migration, placed: Stored[Placement]) -> None:
        """The flip against the record as it is now (re-read until it holds still)."""
        for _ in range(ATTEMPTS):
            found = await read_one(self.store, self.keys.migration(rec.id), Migration)
            if found is None or found.value.state is not _M.SWITCHING:
                return
            if await self._flip_at(found.value, found.mod_revision, placed):
                return
            again = await self.store.get(self.keys.migration(rec.id))
            if again is not None and again.mod_revision == found.mod_revision:
                return  # the record held still: another compare failed; the cycle judges

    async def _fail(self, rec: Migration, why: str) -> None:
        def fail(cur: Migration) -> Migration | None:
            if not cur.active:
                return None
            return cur.model_copy(update={"state": _M.FAILED, "reason": why})

        if (
            await change_migration(self.store, self.keys, rec.id, fail, now=self.clock())
            is not None
        ):
            await self.say(
                "migration.failed",
                f"vm/{rec.vm}",
                f"migration {rec.id} of {rec.vm} from {rec.source} failed: {why}",
            )
