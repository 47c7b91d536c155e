"""The controller's part of drains: :func:`hvcluster.scheduler.drain.plan_drain` decides
from the cluster and the drains' own migrations; a step creates the moves' migration records
(a few transactions for the whole step), says why a VM waits or stays, and pauses a node once
its drain is complete. A failed live move whose target closed meanwhile (paused, drained,
quarantined) is tried live again elsewhere, not by the quick fallback. Run by the migration
coordinator's cycle (controller/migrations.py)."""

from __future__ import annotations

from collections.abc import Callable

from hvcluster.models.base import encode
from hvcluster.models.event import Say
from hvcluster.models.fit import not_up
from hvcluster.models.lifecycle import MigrationState, NodeAdminState
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.models.node import Node
from hvcluster.scheduler.drain import DrainDone, DrainMove, DrainStay, InFlight, plan_drain
from hvcluster.scheduler.snapshot import ClusterSnapshot
from hvcluster.store.base import Compare, Put, Store
from hvcluster.store.batches import Write
from hvcluster.store.jobs import busy
from hvcluster.store.keys import Keys
from hvcluster.store.migrations import create_migrations, new_migration
from hvcluster.store.reads import Decoded
from hvcluster.store.state import ClusterState

_M = MigrationState


class Drains:
    """One step of every drain under way, each cycle."""

    def __init__(
        self,
        store: Store,
        keys: Keys,
        say: Say,
        clock: Callable[[], float],
        said: dict[str, str],
    ) -> None:
        """``said``: subject -> the last wait or stay said of it (the coordinator's own)."""
        self.store, self.keys, self.say, self.clock, self.said = store, keys, say, clock, said

    async def step(
        self, state: ClusterState, snapshot: ClusterSnapshot, records: Decoded[Migration]
    ) -> None:
        in_flight = [
            InFlight(r.value.vm, r.value.source, r.value.target)
            for r in records.items.values()
            if r.value.active
        ]
        failed_live: dict[str, str] = {}
        stay: dict[str, str] = {}
        for stored in sorted(records.items.values(), key=lambda s: s.value.created):
            r = stored.value
            node = snapshot.nodes.get(r.source)
            if node is None or node.admin_state is not NodeAdminState.DRAINING:
                continue
            if r.requested_by != f"drain:{r.source}" or r.created < node.node.admin_since:
                continue
            if r.state is _M.CANCELLED:
                stay[r.vm] = f"{r.vm} stays on {r.source}: its move was cancelled"
            elif r.state is _M.FAILED and r.kind is MigrationKind.QUICK:
                stay[r.vm] = f"{r.vm} stays on {r.source}: quick migration failed ({r.reason})"
            elif r.state is _M.FAILED and not self._closed_since(snapshot, r.target):
                failed_live[r.vm] = r.reason
        decisions = plan_drain(snapshot, in_flight, failed_live, stay)
        moves = [d for d in decisions if isinstance(d, DrainMove)]
        made = await create_migrations(  # the step's moves in a few transactions
            self.store, [self._drain_move(d, snapshot) for d in moves]
        )
        created = iter(made)  # in the decisions' order
        for d in decisions:
            match d:
                case DrainMove():
                    rec = next(created)
                    if rec is not None:
                        await self.say("drain.move", f"vm/{d.vm}", f"{d.reason} ({rec.id})")
                    elif (why := await busy(self.store, self.keys, d.vm)) is not None and (
                        self.said.get(f"vm/{d.vm}") != why  # it moves once that job ends
                    ):
                        self.said[f"vm/{d.vm}"] = why
                        await self.say("drain.wait", f"vm/{d.vm}", f"{why}; drain waits")
                case DrainStay():
                    if self.said.get(f"vm/{d.vm}") != d.reason:
                        self.said[f"vm/{d.vm}"] = d.reason
                        await self.say("drain.stay", f"vm/{d.vm}", d.reason)
                case DrainDone():
                    if await self._pause(state, d.node, d.reason):
                        await self.say("node.drained", f"node/{d.node}", d.reason)

    @staticmethod
    def _closed_since(snapshot: ClusterSnapshot, target: str) -> bool:
        """A failed drain move's target now takes no VMs (paused, drained or quarantined,
        perhaps while the move ran): the move is tried live again, elsewhere, rather than
        by the quick fallback."""
        node = snapshot.nodes.get(target)
        return node is not None and not_up(node.node) is not None

    def _drain_move(self, d: DrainMove, snapshot: ClusterSnapshot) -> tuple[Migration, Write]:
        placement = snapshot.vms[d.vm].placement
        epoch = placement.epoch if placement is not None else 0
        by = f"drain:{d.node}"
        return new_migration(self.keys, d.vm, d.node, d.target, epoch, d.kind, by, now=self.clock())

    async def _pause(self, state: ClusterState, name: str, reason: str) -> bool:
        stored = state.nodes.items.get(name)
        if stored is None or stored.value.admin_state is not NodeAdminState.DRAINING:
            return False
        node: Node = stored.value.model_copy(
            update={
                "admin_state": NodeAdminState.PAUSED,
                "admin_reason": reason,
                "admin_since": self.clock(),
            }
        )
        key = self.keys.node(name)
        result = await self.store.txn(
            [Compare.mod_is(key, stored.mod_revision)], [Put(key, encode(node))]
        )
        return result.succeeded
