"""A node's proof of life: its lease, its ``alive/<node>`` key, and feeding its watchdog.

The rules (docs/architecture.md, "Safety"):

* The watchdog is fed with the deadline *time the last confirmed keepalive was sent* +
  ``fence_after``, on the monotonic clock the watchdog shares.
* When keepalives fail, the agent asks "is it me, or is it etcd?" (every half evidence
  interval, beside the keepalives, so a slow keepalive never delays the question) and feeds
  only on fresh, positive evidence that nobody can act (:mod:`hvcluster.agent.evidence`).
  Anything less and the deadline runs out: the watchdog kills the VMs.
* A lease found gone is replaced at once, in a transaction that also checks the placements of
  the VMs this host runs are unchanged; where one changed, the VM is killed first.
* A restarted agent adopts the lease its predecessor left in ``alive/<node>`` if it still
  lives, so an agent restarted within ``fence_after`` changes nothing in the cluster.
* The watchdog must acknowledge feeding: while it does not (none running, one watching
  another run dir, a hung one), nothing would kill this node's VMs were it cut off, so it
  starts none (:meth:`LivenessState.may_start`), says so in an event and in ``nodes/<me>``.

This runs on its own thread and event loop (:mod:`hvcluster.agent.liveness_thread`); the
node agent reads what it needs through :meth:`NodeLiveness.state`, a snapshot published
under a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from hvcluster.agent.evidence import NONE, Evidence, members_of, seek
from hvcluster.agent.keepalive_hedge import hedged_keepalive
from hvcluster.metrics import AgentMetrics
from hvcluster.models.base import encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.errors import LeaseLost, StoreError
from hvcluster.models.node import Node, NodeAlive, WatchdogReport
from hvcluster.store.base import Compare, EventType, Put, Store, WatchEvent
from hvcluster.store.follow import follow
from hvcluster.store.guards import keys_unchanged
from hvcluster.store.keys import Keys
from hvcluster.store.reads import read_one, read_value
from hvcluster.watchdog.node import WatchdogFeeder

log = logging.getLogger(__name__)

# Placements of the VMs this host runs: vm -> mod revision of placements/<vm> when started.
LocalPlacements = Callable[[], Mapping[str, int]]
KillChanged = Callable[[set[str]], Awaitable[None]]
# Record an event about this node: (event kind, reason); the subject is bound in.
SayOfNode = Callable[[str, str], Awaitable[None]]
# While a keepalive hangs, another leaves every this share of the interval (keepalive_hedge).
HEDGE_SHARE = 0.2


@dataclass(frozen=True)
class LivenessState:
    """What the rest of the agent may read of liveness, from any thread."""

    registered: bool = False
    lease_id: int = 0
    last_confirmed_sent: float | None = None  # monotonic
    watchdog: WatchdogReport | None = None  # None: not judged yet

    def may_start(self, now: float, fence_after: float) -> str | None:
        """None if this node may start a VM now (monotonic ``now``), else why not."""
        if not self.registered:
            return "not registered yet"
        sent = self.last_confirmed_sent
        if sent is None or now - sent > fence_after:
            return "keepalives unconfirmed"
        if self.watchdog is None:
            return "the watchdog has not acknowledged feeding yet"
        if not self.watchdog.acknowledging:
            return f"the watchdog does not acknowledge feeding: {self.watchdog.problem}"
        return None


class NodeLiveness:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        node: str,
        config: ClusterConfig,
        feeder: WatchdogFeeder | None,
        local_placements: LocalPlacements,
        kill_changed: KillChanged,
        say: SayOfNode,
        clock: Callable[[], float] = time.monotonic,
        on_registered: Callable[[], Awaitable[object]] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall: Callable[[], float] = time.time,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.store, self.keys, self.node, self.config = store, keys, node, config
        # renewals, feeding and fences measured (the agent's, else a registry nobody reads)
        self.metrics = metrics if metrics is not None else AgentMetrics(node, clock)
        self.feeder = feeder
        self.local_placements = local_placements
        self.kill_changed = kill_changed
        self.say = say
        self.clock, self.sleep, self.wall = clock, sleep, wall  # a simulation's: one clock
        self.on_registered = on_registered  # e.g. rewrite nodes/<me> with registered_at
        self.lease_id = 0
        self.last_confirmed_sent: float | None = None
        self.deadline = 0.0  # the last deadline given to the watchdog
        self._fence_counted = 0.0  # the passed deadline last counted as a fence
        self.lease_ttl = config.lease_ttl_s  # as etcd last reported it for our lease
        self.failing = False  # the last keepalive failed: seek evidence
        self.last_evidence: Evidence = NONE
        self.members_known = 0  # how many etcd members the cluster has, once learnt
        self._ask_members_at = 0.0
        self.fed_on: Evidence | None = None  # what fed the watchdog since the last keepalive
        self._saying: set[asyncio.Task[None]] = set()
        self.registered = asyncio.Event()
        self.key_gone = asyncio.Event()  # our alive key vanished while the lease lives
        self.watchdog: WatchdogReport | None = None  # as last judged
        self._watchdog_written: WatchdogReport | None = None  # as last written to nodes/<me>
        self._lock = threading.Lock()
        self._state = LivenessState()

    def state(self) -> LivenessState:
        """A snapshot of what the node agent needs (lease, confirmation, watchdog)."""
        with self._lock:
            return self._state

    def _publish(self) -> None:
        state = LivenessState(
            self.registered.is_set(), self.lease_id, self.last_confirmed_sent, self.watchdog
        )
        with self._lock:
            self._state = state

    # --- registration --------------------------------------------------------------
    async def register(self) -> None:
        """Adopt a live lease left by a previous agent of this node, or take a new one and
        bind ``alive/<node>`` to it, checking the placements of local VMs are unchanged."""
        previous = await read_value(self.store, self.keys.alive(self.node), NodeAlive)
        if previous is not None:
            try:
                sent = self.clock()
                ttl = await self.store.keepalive(previous.lease)
                if ttl > 0 and previous.node == self.node:
                    self.lease_id = previous.lease
                    self.lease_ttl = ttl
                    self._confirmed(sent)
                    self.registered.set()
                    self._publish()
                    await self.say(
                        "node.rejoined",
                        f"node {self.node} adopted its live lease "
                        f"{previous.lease:x}: nothing moves",
                    )
                    return
            except LeaseLost:
                pass
        await self._register_new()

    async def _register_new(self) -> None:
        key = self.keys.alive(self.node)
        while True:
            sent = self.clock()
            lease = await self.store.grant(self.config.lease_ttl_s)
            local = dict(self.local_placements())
            kv = await self.store.get(key)
            placed = {self.keys.placement(vm): rev for vm, rev in local.items()}
            guard = await keys_unchanged(self.store, self.keys.prefix("placements"), placed)
            compares = [Compare.mod_is(key, kv.mod_revision if kv else 0), *guard.compares]
            value = NodeAlive(node=self.node, lease=lease.id, since=self.wall(), pid=os.getpid())
            result = await self.store.txn(compares, [Put(key, encode(value), lease=lease.id)])
            if result.succeeded:
                self.lease_id = lease.id
                self.lease_ttl = self.config.lease_ttl_s
                self._confirmed(sent)
                self.registered.set()
                self._publish()
                self._watchdog_written = None  # a node record written anew may lack it
                await self.say(
                    "node.registered", f"node {self.node} is alive with lease {lease.id:x}"
                )
                if self.on_registered is not None:
                    await self.on_registered()
                return
            await self.store.revoke(lease.id)
            changed = await self._changed_placements(local)
            if changed:
                await self.say(
                    "node.fenced_vms",
                    f"node {self.node} re-registering: placements of {sorted(changed)} changed "
                    "while it was away; killing its copies",
                )
                await self.kill_changed(changed)

    async def _changed_placements(self, local: Mapping[str, int]) -> set[str]:
        changed = set()
        for vm, rev in local.items():
            kv = await self.store.get(self.keys.placement(vm))
            if (kv.mod_revision if kv else 0) != rev:
                changed.add(vm)
        return changed

    # --- the keepalive loop --------------------------------------------------------
    def _confirmed(self, sent: float) -> None:
        self.last_confirmed_sent = sent
        self._feed(sent + self.config.fence_after_s)

    def _feed(self, deadline: float) -> None:
        self._count_fence()  # a deadline that passed before this feed was a fence
        self.deadline = max(self.deadline, deadline)
        if self.feeder is not None:
            self.feeder.feed(self.deadline)
        self.metrics.watchdog.fed(self.deadline)
        self._publish()

    def _count_fence(self) -> None:
        """Count the watchdog's deadline as passed (its VMs killed), once per deadline."""
        if 0 < self.deadline <= self.clock() and self._fence_counted != self.deadline:
            self._fence_counted = self.deadline
            self.metrics.watchdog_fences.inc()

    # --- does the watchdog answer? ------------------------------------------------------
    async def check_watchdog(self) -> None:
        """Judge whether the watchdog acknowledges feeding; say a change, and keep
        ``nodes/<me>``'s ``watchdog`` field saying it."""
        if self.feeder is None:
            return
        ack = self.feeder.acknowledgement(grace=self.config.fence_after_s / 2)
        was = self.watchdog
        if ack.ok is not None and (
            was is None or was.acknowledging != ack.ok or was.problem != ack.problem
        ):
            since = self.wall()
            if not ack.ok and ack.silent_since is not None:
                since -= max(0.0, self.clock() - ack.silent_since)
            self.watchdog = WatchdogReport(acknowledging=ack.ok, since=since, problem=ack.problem)
            self._publish()
            if not ack.ok:
                at = time.strftime("%H:%M:%S", time.localtime(since))
                await self.say(
                    "node.watchdog_silent",
                    f"the watchdog of {self.node} does not acknowledge feeding since {at}: "
                    f"{ack.problem}; no VM starts on {self.node} until it does",
                )
            elif was is not None:
                await self.say(
                    "node.watchdog_ok",
                    f"the watchdog of {self.node} acknowledges feeding again: VMs may start",
                )
        report = self.watchdog
        if (
            report is not None
            and report != self._watchdog_written
            and await write_watchdog_report(self.store, self.keys, self.node, report)
        ):
            self._watchdog_written = report

    def confirmed_within(self, seconds: float) -> bool:
        return self.last_confirmed_sent is not None and (
            self.clock() - self.last_confirmed_sent <= seconds
        )

    @property
    def fenced(self) -> bool:
        """True once the watchdog's deadline has passed: this host's VMs are being killed."""
        return self.clock() >= self.deadline

    async def run(self) -> None:
        """Keep the lease alive forever, re-registering when it is lost; while keepalives
        fail, seek evidence that nobody can act beside them."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._keepalives(), name="keepalives")
            group.create_task(self._seek_evidence(), name="evidence")

    async def _keepalives(self) -> None:
        interval = self.config.keepalive_interval_s
        while True:
            self._count_fence()  # (still cut off: no feed would count it)
            started = self.clock()
            try:
                confirmed = await hedged_keepalive(
                    self.store,
                    self.lease_id,
                    interval=interval,
                    hedge_after=interval * HEDGE_SHARE,
                    clock=self.clock,
                    sleep=self.sleep,
                )
                self.failing = False
                self.lease_ttl = confirmed.ttl
                self.metrics.lease_renew_seconds.observe(self.clock() - confirmed.sent)
                before, fenced = self.last_confirmed_sent, self.fenced
                self._confirmed(confirmed.sent)
                if before is not None and self.clock() - before > 1.5 * interval:
                    # How close a stall came to the watchdog's deadline (docs: a stall is
                    # survived when stall + interval + reconnect < fence_after).
                    log.warning(
                        "keepalive confirmed again %.2fs after the last confirmed one was "
                        "sent (fence_after %gs)",
                        self.clock() - before,
                        self.config.fence_after_s,
                    )
                gap = None if before is None else confirmed.sent - before
                if gap is not None and gap > self.config.fence_after_s:
                    self._say_later(*self._back(gap, fenced))
                self.fed_on = None
                if self.key_gone.is_set():
                    self.key_gone.clear()
                    await self._replace_deleted_key()
            except LeaseLost:
                self.failing = False  # etcd answers: no outage to weigh
                self.metrics.lease_renew_failures.inc()
                await self.say(
                    "node.lease_lost",
                    f"node {self.node} lost lease {self.lease_id:x}; re-registering",
                )
                await self._reregister()
            except (StoreError, TimeoutError) as e:
                self.failing = True
                self.metrics.lease_renew_failures.inc()
                self._without_keepalive(e)
            except Exception:  # never let the keepalive loop die: the watchdog would fire
                log.exception("keepalive cycle failed unexpectedly; carrying on")
            try:
                await self.check_watchdog()
            except (StoreError, TimeoutError) as e:
                log.warning("could not report the watchdog's state: %s", e)
            except Exception:
                log.exception("watchdog check failed unexpectedly; carrying on")
            await self.sleep(max(0.0, interval - (self.clock() - started)))

    def _back(self, gap: float, fenced: bool) -> tuple[str, str]:
        """The event of a keepalive confirmed after longer than ``fence_after`` without."""
        evidence = (self.fed_on or self.last_evidence).describe()
        fate = (
            "its watchdog had fired: its VMs were killed, and start again where placed"
            if fenced
            else f"it kept its VMs on evidence that nobody could act ({evidence})"
        )
        return "node.etcd_back", f"node {self.node} reached etcd again after {gap:.1f}s; {fate}"

    def _say_later(self, kind: str, reason: str) -> None:
        """Say it without holding up the next keepalive (an event is a write)."""

        async def say() -> None:
            await self.say(kind, reason)

        task = asyncio.get_running_loop().create_task(say())
        self._saying.add(task)
        task.add_done_callback(self._said)

    def _said(self, task: asyncio.Task[None]) -> None:
        self._saying.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not say %s", task.exception())

    def _overdue(self) -> bool:
        """A keepalive failed, or none was confirmed for longer than an interval and a half
        (one may hang in a connection attempt that has not failed yet)."""
        sent = self.last_confirmed_sent
        late = sent is not None and self.clock() - sent > 1.5 * self.config.keepalive_interval_s
        return self.failing or late

    async def _seek_evidence(self) -> None:
        """Every half evidence interval while keepalives are overdue: "is it me, or etcd?"
        Positive evidence feeds the watchdog from when the question was asked
        (:meth:`hvcluster.agent.evidence.Evidence.feeds_until`)."""
        period = self.config.evidence_interval_s / 2
        budget = self.config.evidence_interval_s
        while True:
            asked = self.clock()
            try:
                if self._overdue():
                    evidence = await seek(self.store, budget, self.members_known, self.sleep)
                    self._feed_on(evidence, asked)
                elif not self.members_known and asked >= self._ask_members_at:
                    self._ask_members_at = asked + 30.0  # once, or again in a while
                    self.members_known = await members_of(self.store, budget, self.sleep)
            except Exception:  # never let it die: the watchdog would fire for nothing
                log.exception("seeking evidence failed unexpectedly; carrying on")
            await self.sleep(max(0.0, period - (self.clock() - asked)))

    def _feed_on(self, evidence: Evidence, asked: float) -> None:
        was, self.last_evidence = self.last_evidence, evidence
        ttl = min(self.lease_ttl, self.config.lease_ttl_s)
        until = evidence.feeds_until(asked, self.config.fence_after_s, ttl)
        if until is not None and self._overdue():
            self.fed_on = evidence
            self._feed(until)
        if evidence != was:
            fate = "VMs keep running" if until is not None else "it may be us cut off"
            log.warning("keepalives fail; %s: %s", evidence.describe(), fate)

    async def _replace_deleted_key(self) -> None:
        """Our alive key was deleted (by hand?) while our lease lives: to the controller we
        look dead, so bind a new key at once, under the same guard as after a lost lease."""
        if await self.store.get(self.keys.alive(self.node)) is not None:
            return
        old = self.lease_id
        await self.say(
            "node.key_lost",
            f"node {self.node}'s alive key vanished while its lease lived; re-registering",
        )
        await self._reregister()
        if self.lease_id != old:
            with contextlib.suppress(StoreError):
                await self.store.revoke(old)

    async def watch_key(self) -> None:
        """Notice at once when our alive key is deleted."""
        key = self.keys.alive(self.node)

        def seen(event: WatchEvent) -> None:
            if event.key == key and event.type is EventType.DELETE:
                self.key_gone.set()

        await follow(self.store, key, seen, self.config.keepalive_interval_s, self.sleep)

    async def _reregister(self) -> None:
        try:
            await self._register_new()
        except (StoreError, TimeoutError) as e:
            log.warning("re-registration failed: %s", e)

    def _without_keepalive(self, error: BaseException) -> None:
        why = str(error) or type(error).__name__
        left = self.deadline - self.clock()
        fate = (
            f"watchdog fires in {left:.1f}s"
            if left > 0
            else f"watchdog fired {-left:.1f}s ago: our VMs are killed and may run elsewhere"
        )
        log.warning("keepalive failed (%s); %s; %s", why, self.last_evidence.describe(), fate)


async def write_watchdog_report(
    store: Store, keys: Keys, node: str, report: WatchdogReport
) -> bool:
    """Set ``watchdog`` in ``nodes/<node>`` (CAS), nothing else; False if the record is not
    there (yet) or does not decode (the agent's registration rewrites it)."""
    key = keys.node(node)
    while True:
        found = await read_one(store, key, Node)
        if found is None:
            return False
        if found.value.watchdog == report:
            return True
        updated = found.value.model_copy(update={"watchdog": report})
        compare = Compare.mod_is(key, found.mod_revision)
        result = await store.txn([compare], [Put(key, encode(updated))])
        if result.succeeded:
            return True
