"""The controller: while this agent is the elected leader, read, decide, apply, say why.

Each cycle reads the cluster from etcd, builds a frozen snapshot (with the few facts it notes
between cycles, such as when a node's ``alive`` key vanished), calls the pure scheduler, and applies
each decision as a transaction. Every decision is logged as an event with its reason; a wait
is said once, not every cycle. A leader change loses nothing: the next leader recomputes from
etcd, and applying a decision twice is harmless (every write compares revisions).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from hvcluster.controller.apply import Applier
from hvcluster.controller.balance import BalanceRunner
from hvcluster.controller.fencing import Fencer
from hvcluster.controller.migrations import MigrationCoordinator
from hvcluster.controller.notes import ControllerNotes
from hvcluster.controller.promotion import Promoter
from hvcluster.controller.telling import Telling, bounded
from hvcluster.controller.view import build_snapshot
from hvcluster.metrics import AgentMetrics
from hvcluster.models.config import ClusterConfig
from hvcluster.models.errors import StoreError
from hvcluster.models.event import Say, SayAll
from hvcluster.models.migration import Migration
from hvcluster.models.node import Node, NodeAlive
from hvcluster.scheduler import decisions as dec
from hvcluster.scheduler.plan import plan
from hvcluster.store.base import Store, WatchEvent
from hvcluster.store.batches import Write, commit_all
from hvcluster.store.cache import WatchedCache
from hvcluster.store.follow import follow, run_cycles
from hvcluster.store.keys import Keys
from hvcluster.store.reads import Decoded, read_kind
from hvcluster.store.state import ClusterState, cluster_from, cluster_prefixes
from hvcluster.tasks import cancel_all

log = logging.getLogger(__name__)


EVENT_KIND: dict[type, str] = {
    dec.Place: "vm.placed",
    dec.Recover: "vm.recovered",
    dec.LeaveFailed: "vm.failed",
    dec.Unplace: "vm.unplaced",
    dec.Failback: "vm.failback",
    dec.DeclareDead: "node.dead",
    dec.Quarantine: "node.quarantined",
    dec.Unquarantine: "node.unquarantined",
    dec.Wait: "controller.waiting",
}
# Decisions that may repeat every cycle with the same reason: said once.
REPEATING = (dec.Wait, dec.LeaveFailed)


class Controller:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        name: str,
        say: Say,
        is_leader: Callable[[], bool],
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        metrics: AgentMetrics | None = None,
        now: Callable[[], float] = time.monotonic,
        say_all: SayAll | None = None,
    ) -> None:
        """``clock``: wall time; ``now``: monotonic (the cache's stall deadline); with
        ``sleep``, a simulation's ManualClock, real by default. ``say_all``: how a cycle's
        events are said together, in few writes (by default one by one through ``say``)."""
        self.store, self.keys, self.name, self.say = store, keys, name, say
        self.say_all = say_all
        # cycles, leadership, failovers and fence agent runs (the agent's registry)
        self.metrics = metrics if metrics is not None else AgentMetrics(name)
        self.sleep = sleep  # clock and sleep: a simulation's ManualClock, real by default
        self.is_leader = is_leader
        self.clock = clock
        self.notes = ControllerNotes(started=clock())
        self.leading = False
        self.fencer = Fencer(say, self.metrics)
        self.wake = asyncio.Event()
        self.cycles = 0
        # What each cycle decides from: read once, then kept current by a watch (the store
        # is not read whole every cycle), decoding only what changed.
        watched = cluster_prefixes(keys) | {keys.prefix("migrations"): Migration}
        self.cache = WatchedCache(store, watched, now=now, sleep=sleep)
        self.balance = BalanceRunner(store, keys, say, clock, clock())
        self.migrations = MigrationCoordinator(
            store, keys, say, self.notes, is_leader, clock, sleep, self.metrics, self.cache
        )
        self.promoter = Promoter(store, keys, say, is_leader, clock, sleep)

    async def run(self, interval: float = 0.5) -> None:
        helpers = [
            asyncio.create_task(self.migrations.run(), name="migrations"),
            asyncio.create_task(self.migrations.watch(), name="watch-migrations"),
            asyncio.create_task(self.promoter.run(), name="etcd-promotion"),
            asyncio.create_task(self.follow_intent(), name="watch-intent"),
        ]
        try:
            await self._run(interval)
        finally:
            await cancel_all(helpers)  # again until they end: a wait_for may swallow one
            await self.cache.close()

    async def follow_intent(self) -> None:
        """Wake the leader's loop at once when a VM's spec changes (created, started,
        stopped, edited) or a node's alive key comes or goes: a new VM runs within
        milliseconds, not at the next interval. Statuses do not wake it (at 8,000 VMs every
        agent report would cost a whole cycle); their changes wait for the interval."""

        def seen(_: WatchEvent) -> None:
            if self.is_leader():
                self.wake.set()

        await asyncio.gather(
            follow(self.store, self.keys.prefix("vms"), seen, sleep=self.sleep),
            follow(self.store, self.keys.prefix("alive"), seen, sleep=self.sleep),
        )

    async def _run(self, interval: float) -> None:
        # (a bug in one cycle must not take the agent down)
        await run_cycles("controller", self._turn, self.wake, interval, self.sleep)

    async def _turn(self) -> None:
        if not self.is_leader():
            if self.leading:
                log.info("%s is no longer the controller", self.name)
                self.leading = False
                await self.cache.suspend()  # (no watch to buffer while it does not lead)
            self.metrics.controller_leader.set(0)
            await self.observe()
        else:
            self.metrics.controller_leader.set(1)
            started = time.monotonic()  # a measure of work done, on any clock
            for sentence in await self.cycle():
                log.info("controller: %s", sentence)
            self.metrics.controller_cycle_seconds.observe(time.monotonic() - started)

    async def cycle(self) -> list[str]:
        """One read-decide-apply pass; returns a sentence per decision applied."""
        self.cycles += 1
        now = self.clock()
        notes = self.notes
        if not self.leading:
            self.leading = True
            notes.reported.clear()  # say every wait once more, as the new controller
            await self.say(
                "controller.elected", f"node/{self.name}", f"{self.name} is now the controller"
            )
        # Migrations and the cluster at one revision (a migration that ends flips its
        # placement in the same transaction), and every write of ours before it included.
        view = await self.cache.read()
        migrations = view.decoded(self.keys.prefix("migrations"), Migration)
        state = cluster_from(view, self.keys)
        for bad in state.corrupt:
            if bad.key not in notes.corrupt_reported:
                notes.corrupt_reported.add(bad.key)
                await self.say("store.corrupt", bad.key, f"{bad}; skipped until fixed")
        notes.observe(state, now)
        await self._read_leases(state, notes)
        self._fence(state.config.fence_command, state.config.fence_timeout_s, notes)
        notes.fenced = set(self.fencer.fenced)
        applier = Applier(self.store, self.keys, state, now)
        said = await applier.finish_moves()
        for sentence in said:
            await self.say("vm.moved", "", sentence)
        snapshot = build_snapshot(state, notes, now, migrations)
        said += await self._apply_plan(applier, plan(snapshot), notes)
        try:
            said += await self.balance.cycle(snapshot, migrations, now)
        except (StoreError, TimeoutError):
            raise
        except Exception as e:  # a bug in balancing must not stop failover
            log.error("controller: balancing", exc_info=e)
            what = f"balancing failed: {type(e).__name__}: {e}"
            if notes.changed("error:balance", what):
                await self.say("controller.error", "cluster", what)
        return said

    async def _decision_broke(
        self, d: dec.Decision, error: Exception, notes: ControllerNotes
    ) -> None:
        """Applying ``d`` raised unexpectedly: logged with its traceback and said as
        ``controller.error`` (once while it repeats); the cycle goes on with the other
        decisions, and the next cycle decides afresh."""
        log.error("controller: applying %r", d, exc_info=error)
        what = f"{type(error).__name__}: {error}"
        if notes.changed(f"error:{d.subject}", what):  # (its reason may change each cycle)
            await self.say("controller.error", d.subject, f"not applied ({what}): {d.reason}")

    async def observe(self) -> None:
        """A follower's cycle: watch nodes come and go and read their leases, to be ready
        to lead."""
        nodes = await read_kind(self.store, self.keys, "nodes", Node)
        alive = await read_kind(self.store, self.keys, "alive", NodeAlive)
        state = ClusterState(
            config=ClusterConfig(),
            nodes=nodes,
            alive=alive,
            vms=Decoded(),
            placements=Decoded(),
            statuses=Decoded(),
            corrupt=[],
        )
        self.notes.observe_nodes(state, self.clock())
        await self._read_leases(state, self.notes)

    async def _read_leases(self, state: ClusterState, notes: ControllerNotes) -> None:
        """Read each live node's lease TTL, so that when a key goes we can tell a lease that
        ran out (the node is fenced already) from one revoked early (it may not be)."""

        async def read(node: str, lease: int) -> None:
            try:
                remaining = await self.store.lease_ttl(lease)
            except StoreError:
                return
            notes.saw_lease(node, remaining, self.clock())

        await asyncio.gather(
            *(read(name, alive.value.lease) for name, alive in state.alive.items.items())
        )

    def _fence(self, command: str, timeout: float, notes: ControllerNotes) -> None:
        for node in list(self.fencer.fenced):
            if node not in notes.gone_since:
                self.fencer.forget(node)
        for node in notes.gone_since:
            self.fencer.request(node, command, timeout)

    async def _apply_plan(
        self, applier: Applier, decisions: Sequence[dec.Decision], notes: ControllerNotes
    ) -> list[str]:
        """Apply a plan in order; returns the reasons of the decisions applied. The
        decisions about VMs between two others (a node's, a failback) commit together, in
        as few transactions as etcd's limits allow (:func:`commit_all`); their events are
        then said in the plan's order, waits bounded (:func:`telling.bounded`)."""
        applied: list[str] = []
        pending: list[tuple[dec.Decision, Write | bool]] = []

        async def flush() -> None:
            outcomes = await self._commit(pending, notes)
            pending.clear()
            tellings = [t for d, ok in outcomes if (t := self._telling(d, ok, notes))]
            applied.extend(d.reason for d, ok in outcomes if ok and not isinstance(d, REPEATING))
            await self._tell_all(bounded(tellings), notes)

        for decision in decisions:
            try:
                prepared = applier.prepare(decision)
                if prepared is not None:
                    pending.append((decision, prepared))
                    continue
                await flush()
                ok = await applier.apply_alone(decision)
                if (t := self._telling(decision, ok, notes)) is not None:
                    await self._tell(t, notes)
                    applied.append(decision.reason)
            except (StoreError, TimeoutError):
                raise  # the store: the next cycle recomputes everything
            except Exception as e:  # this decision only: the others still apply
                await self._decision_broke(decision, e, notes)
        await flush()
        return applied

    async def _commit(
        self, pending: Sequence[tuple[dec.Decision, Write | bool]], notes: ControllerNotes
    ) -> list[tuple[dec.Decision, bool]]:
        """Commit the writes of ``pending`` together; each decision with whether it
        applied. A write that raises (not the store's error: a bug) is found by committing
        them one by one again: said for its decision alone, the others still apply."""
        writes = [w for _, w in pending if isinstance(w, Write)]
        try:
            done = iter(await commit_all(self.store, writes))
            return [(d, next(done) if isinstance(w, Write) else w) for d, w in pending]
        except (StoreError, TimeoutError):
            raise
        except Exception:
            log.info("controller: a batch of writes raised; applying them one by one")
        outcomes = []
        for d, w in pending:
            if not isinstance(w, Write):
                outcomes.append((d, w))
                continue
            try:
                outcomes.append((d, (await commit_all(self.store, [w]))[0]))
            except (StoreError, TimeoutError):
                raise
            except Exception as e:
                await self._decision_broke(d, e, notes)
        return outcomes

    def _telling(self, d: dec.Decision, ok: bool, notes: ControllerNotes) -> Telling | None:
        """The event that says ``d`` was applied (``ok``), or None: it lost a race (the
        next cycle recomputes), or it is a wait or a failure said already."""
        kind = EVENT_KIND[type(d)]
        if isinstance(d, REPEATING):
            if ok and notes.changed(d.subject, d.reason):
                return Telling(kind, d.subject, d.reason, d)
            return None
        if not ok:
            log.info("decision lost a race (the next cycle recomputes): %s", d.reason)
            return None
        notes.reported.pop(d.subject, None)
        if isinstance(d, dec.Recover):
            cause = "node_dead" if d.from_dead else "vm_failed"
            self.metrics.failovers.labels(from_node=d.from_node, cause=cause).inc()
        return Telling(kind, d.subject, d.reason, d)

    async def _tell(self, t: Telling, notes: ControllerNotes) -> None:
        try:
            await self.say(t.kind, t.subject, t.reason)
        except (StoreError, TimeoutError):
            raise
        except Exception as e:  # (a bug in saying one must not stop the others)
            if t.decision is not None:
                await self._decision_broke(t.decision, e, notes)
            else:
                log.error("controller: saying %s", t.reason, exc_info=e)

    async def _tell_all(self, tellings: Sequence[Telling], notes: ControllerNotes) -> None:
        """Say ``tellings`` in order, in few writes (``say_all``). One that cannot be said
        (a bug, not the store) is found by saying them one by one again."""
        if len(tellings) < 2 or self.say_all is None:
            for t in tellings:
                await self._tell(t, notes)
            return
        try:
            await self.say_all([(t.kind, t.subject, t.reason) for t in tellings])
            return
        except (StoreError, TimeoutError):
            raise
        except Exception:
            log.info("controller: saying a cycle's events together raised; one by one")
        for t in tellings:
            await self._tell(t, notes)

    def close(self) -> None:
        """Stop the fence runs and the cache's watch (a caller of :meth:`cycle` alone too)."""
        self.fencer.close()
        self.cache.cancel()
