"""The controller's part of balancing: when to balance, and starting the plan's moves.

A *balance run* begins periodically (``balance.interval_s``, 30 min by default; 0: never),
when a node joins or is resumed (``balance.on_join``), or on an administrator's request
(``requests/balance/<id>``, written by the API for ``hvc cluster balance``, which this
module answers with its plan, dry run or not); ``balance.enabled = false``
leaves only the last. A run plans (:func:`hvcluster.scheduler.balance.plan_balance`, with the
CPU use the agents publish at ``usage/<node>``), creates the live migrations of the plan's
first wave (``requested_by`` ``balance:<trigger>``), waits for them to end, and plans
again, until a plan is empty (every node within the level) or moves nothing new: a VM the
run moved (or tried to) already is not moved again by it (no ping-pong): a plan that would
stops the run, said with the moves that failed and why, and the nodes left above the level;
a run also stops after ``MAX_WAVES``. Every start, move, node left above the level and end
is an event with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from hvcluster.models.base import encode
from hvcluster.models.event import Say
from hvcluster.models.lifecycle import MigrationState as _M
from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.models.usage import BalanceAnswer, BalanceRequest, NodeUsage, PlannedMove
from hvcluster.scheduler.balance import BalanceMove, BalancePlan, CpuUse, plan_balance
from hvcluster.scheduler.decisions import named
from hvcluster.scheduler.drain import InFlight
from hvcluster.scheduler.snapshot import ClusterSnapshot
from hvcluster.store.base import Compare, Put, Store
from hvcluster.store.batches import Write
from hvcluster.store.keys import Keys
from hvcluster.store.migrations import create_migrations, new_migration
from hvcluster.store.reads import Decoded, read_kind, read_prefix

log = logging.getLogger(__name__)

MAX_WAVES = 50
REQUEST_PREFIX = "balance/"  # requests/balance/<id>: the API asks for a plan (or a run)


def cpu_use(usages: Decoded[NodeUsage]) -> CpuUse:
    """The CPU use the agents published: each host's besides its guests, and each VM's from
    the newest report naming it (a VM that just moved may still be in its old node's)."""
    other: dict[str, float] = {}
    vms: dict[str, tuple[float, float]] = {}
    for stored in usages.items.values():
        u = stored.value
        if u.other_cores is not None:
            other[u.node] = u.other_cores
        for name, cores in u.vms.items():
            if name not in vms or vms[name][0] < u.at:
                vms[name] = (u.at, cores)
    return CpuUse(other, {n: c for n, (_, c) in vms.items()})


def in_flight(records: Decoded[Migration]) -> list[InFlight]:
    return [
        InFlight(r.value.vm, r.value.source, r.value.target)
        for r in records.items.values()
        if r.value.active
    ]


async def read_plan(
    store: Store, keys: Keys, snapshot: ClusterSnapshot, records: Decoded[Migration]
) -> BalancePlan:
    """The balance plan of now, with the published CPU use (the API's dry run, too)."""
    usages = await read_kind(store, keys, "usage", NodeUsage)
    return plan_balance(snapshot, cpu_use(usages), in_flight(records))


@dataclass
class _Run:
    trigger: str
    quiet: bool = True  # automatic: said only when it finds something to do
    waves: int = 0
    moved: set[str] = field(default_factory=set)
    made: dict[str, str] = field(default_factory=dict)  # VM -> the id of its move


class BalanceRunner:
    def __init__(
        self, store: Store, keys: Keys, say: Say, clock: Callable[[], float], started: float
    ) -> None:
        self.store, self.keys, self.say, self.clock = store, keys, say, clock
        self.last_periodic = started  # the first periodic run is an interval after election
        self.open: set[str] | None = None  # nodes open last cycle (None: not seen yet)
        self.run: _Run | None = None
        self.runs = 0  # runs begun (tests wait on it)

    async def cycle(
        self, snapshot: ClusterSnapshot, records: Decoded[Migration], now: float
    ) -> list[str]:
        """Answer the API's requests; begin a run when one is due; carry the run under way
        one wave on. Returns the sentences said."""
        await self._answer(snapshot, records)
        settings = snapshot.config.balance
        joined = self._joined(snapshot)
        if self.run is None and settings.enabled:
            trigger = None
            if joined and settings.on_join:
                trigger = f"{', '.join(joined)} joined or was resumed"
            elif settings.interval_s > 0 and now >= self.last_periodic + settings.interval_s:
                self.last_periodic = now
                trigger = f"periodic, every {settings.interval_s:g} s"
            if trigger is not None:
                self._begin(trigger)
        if self.run is None or _balancing(records):
            return []  # nothing to do, or a wave is under way: plan again once it is done
        return await self._wave(self.run, snapshot, records)

    def _begin(self, trigger: str, quiet: bool = True) -> None:
        self.run = _Run(trigger, quiet)
        self.runs += 1

    async def _answer(self, snapshot: ClusterSnapshot, records: Decoded[Migration]) -> None:
        prefix = self.keys.request(REQUEST_PREFIX)
        found = await read_prefix(self.store, prefix, BalanceRequest)
        for key, stored in sorted(found.items.items()):
            request = stored.value
            if request.answer is not None:
                continue
            plan = await read_plan(self.store, self.keys, snapshot, records)
            why_not = ""
            if request.apply and self.run is not None:
                why_not = f"a balance run ({self.run.trigger}) is under way"
            elif request.apply:
                self._begin(f"requested by {request.by}", quiet=False)
            answer = BalanceAnswer(
                moves=tuple(
                    PlannedMove(vm=m.vm, source=m.source, target=m.target, wave=m.wave,
                                reason=m.reason)
                    for m in plan.moves
                ),
                over=plan.over,
                unresolved=plan.unresolved,
                reason=plan.reason,
                started=request.apply and not why_not,
                why_not_started=why_not,
            )  # fmt: skip
            done = request.model_copy(update={"answer": answer})
            full = prefix + key
            await self.store.txn(
                [Compare.mod_is(full, stored.mod_revision)], [Put(full, encode(done))]
            )

    def _joined(self, snapshot: ClusterSnapshot) -> list[str]:
        now_open = {
            n.name
            for n in snapshot.nodes.values()
            if n.alive and n.admin_state is NodeAdminState.UP
        }
        before, self.open = self.open, now_open
        return [] if before is None else sorted(now_open - before)

    async def _wave(
        self, run: _Run, snapshot: ClusterSnapshot, records: Decoded[Migration]
    ) -> list[str]:
        plan = await read_plan(self.store, self.keys, snapshot, records)
        said: list[str] = []

        async def tell(kind: str, subject: str, sentence: str) -> None:
            await self.say(kind, subject, sentence)
            said.append(sentence)

        run.waves += 1
        if run.waves == 1 and not plan.moves and not plan.unresolved and run.quiet:
            self.run = None  # an automatic run with nothing to do decides nothing: no event
            log.info("balance (%s): %s", run.trigger, plan.reason)
            return said
        if run.waves == 1:
            await tell("balance.start", "cluster", f"balance ({run.trigger}): {plan.reason}")
            for sentence in plan.unresolved:
                await tell("balance.unresolved", "cluster", sentence)
        wave = [m for m in plan.first_wave if m.vm not in run.moved]
        if not wave or run.waves > MAX_WAVES:
            if run.waves > MAX_WAVES:
                why = f"{MAX_WAVES} waves done"
            elif plan.moves:
                why = _stopped(run, plan, records, snapshot.config.balance.level)
            else:
                why = plan.reason
            self.run = None
            ends = "stopped" if plan.moves and run.waves <= MAX_WAVES else "ends"
            await tell("balance.done", "cluster", f"balance ({run.trigger}) {ends}: {why}")
            return said
        by = f"balance:{run.trigger}"
        made = await create_migrations(  # the wave's moves in a few transactions
            self.store, [self._new(snapshot, m, by) for m in wave]
        )
        for move, rec in zip(wave, made, strict=True):
            run.moved.add(move.vm)
            if rec is not None:
                run.made[move.vm] = rec.id
                await tell("balance.move", f"vm/{move.vm}", f"{move.reason} ({rec.id})")
            else:
                log.info("balance: %s is busy with another job; not moved", move.vm)
        return said

    def _new(self, snapshot: ClusterSnapshot, m: BalanceMove, by: str) -> tuple[Migration, Write]:
        placement = snapshot.vms[m.vm].placement
        epoch = placement.epoch if placement is not None else 0
        kind = MigrationKind.LIVE
        return new_migration(self.keys, m.vm, m.source, m.target, epoch, kind, by, now=self.clock())


def _stopped(run: _Run, plan: BalancePlan, records: Decoded[Migration], level: str) -> str:
    """Why a run stops while its plan still has moves: every move of its next wave is of a
    VM it moved (or tried to) already, and a run moves each VM once (no ping-pong). Says
    which of its moves failed and why, and which nodes stay above the level."""
    failed: dict[str, Migration] = {}
    for m in plan.first_wave:
        found = records.items.get(run.made.get(m.vm, ""))
        if found is not None and found.value.state in (_M.FAILED, _M.CANCELLED):
            failed[m.vm] = found.value
    told = [
        f"moving {vm} from {r.source} to {r.target or 'another node'} {r.state.value} "
        f"({r.reason or 'no reason given'})"
        for vm, r in failed.items()
    ]
    if done := [m.vm for m in plan.first_wave if m.vm not in failed]:
        told.append(f"its new plan would move {named(done)} again, which it moved already")
    above = ", ".join(plan.over) or "no node"
    return (
        f"{'; '.join(told)}; a run moves each VM at most once, so this one stopped with "
        f"{above} still above the {level} level"
    )


def _balancing(records: Decoded[Migration]) -> bool:
    return any(
        r.value.active and r.value.requested_by.startswith("balance:")
        for r in records.items.values()
    )
