"""Carry the scheduler's decisions out as etcd transactions.

Every write compares what it read (the placement's mod revision; for a recovery, also that
the dead node's ``alive`` key is still absent), so applying a decision twice, or after the
world moved on, does nothing: the next cycle recomputes from etcd.

The decisions about VMs (place, recover, leave failed, unplace) are :class:`Write` s that
the controller commits many to a transaction (:func:`~hvcluster.store.batches.commit_all`):
a dead node's 125 VMs are placed elsewhere in two transactions, not 125. Each keeps its own
compares; one that lost a race leaves the others committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from hvcluster.models.base import encode
from hvcluster.models.lifecycle import MigrationState, NodeAdminState, VMState, vm_status_change
from hvcluster.models.migration import MigrationKind
from hvcluster.models.node import Node
from hvcluster.models.vm import Placement, VMStatus
from hvcluster.scheduler import decisions as dec
from hvcluster.store.base import Compare, Delete, Put, Store
from hvcluster.store.batches import Write, commit_all
from hvcluster.store.keys import Keys
from hvcluster.store.migrations import create_migration, read_migrations
from hvcluster.store.state import ClusterState

log = logging.getLogger(__name__)


class Applier:
    def __init__(self, store: Store, keys: Keys, state: ClusterState, now: float) -> None:
        self.store, self.keys, self.state, self.now = store, keys, state, now

    async def apply(self, d: dec.Decision) -> bool:
        """Apply one decision; False if it lost a race (nothing was written)."""
        prepared = self.prepare(d)
        if prepared is None:
            return await self.apply_alone(d)
        if isinstance(prepared, bool):
            return prepared
        return (await commit_all(self.store, [prepared]))[0]

    def prepare(self, d: dec.Decision) -> Write | bool | None:
        """What applying ``d`` writes, so that many decisions of a cycle commit in a few
        transactions (:func:`~hvcluster.store.batches.commit_all`): a :class:`Write`; a
        bool when it writes nothing (True: done already, False: refused); None for a
        decision that reads or writes a shared key first (a node, a migration): it goes
        through :meth:`apply_alone`."""
        match d:
            case dec.Place():
                placement = Placement(
                    node=d.node, epoch=d.epoch, reason=d.reason, uid=self._uid(d.vm)
                )
                return self._place(d.vm, placement)
            case dec.Recover():
                return self._recover(d)
            case dec.LeaveFailed():
                return self._leave_failed(d)
            case dec.Unplace():
                key = self.keys.placement(d.vm)
                return Write((Compare.mod_is(key, self._placement_rev(d.vm)),), (Delete(key),))
            case dec.Wait():
                return True
        return None

    async def apply_alone(self, d: dec.Decision) -> bool:
        """Apply a decision that :meth:`prepare` leaves to its own transaction."""
        match d:
            case dec.Failback():
                return await self._failback(d)
            case dec.DeclareDead():
                return await self._update_node(
                    d.node, lambda n: n.model_copy(update={"failures": (*n.failures, self.now)})
                )
            case dec.Quarantine():
                quarantined = NodeAdminState.QUARANTINED
                return await self._admin(d.node, quarantined, d.reason, quarantined_until=d.until)
            case dec.Unquarantine():
                return await self._admin(d.node, NodeAdminState.UP, d.reason)
        raise AssertionError(f"unknown decision {d!r}")

    def _uid(self, vm: str) -> str:
        """The uid of ``vm``'s spec, carried by every placement and status written for it."""
        stored = self.state.vms.items.get(vm)
        return stored.value.uid if stored else ""

    def _placement_rev(self, vm: str) -> int:
        stored = self.state.placements.items.get(vm)
        return stored.mod_revision if stored else 0

    def _node_as_read(self, node: str) -> Compare:
        """The target node's record unchanged since read: a placement decided on a node
        that an admin paused or drained meanwhile (or whose resources changed) is not
        written, and is decided again on what is there now."""
        stored = self.state.nodes.items.get(node)
        return Compare.mod_is(self.keys.node(node), stored.mod_revision if stored else 0)

    def _place(self, vm: str, placement: Placement) -> Write:
        key = self.keys.placement(vm)
        compares = (
            Compare.mod_is(key, self._placement_rev(vm)),
            Compare.present(self.keys.vm(vm)),
            self._node_as_read(placement.node),
        )
        return Write(compares, (Put(key, encode(placement)),))

    async def _admin(self, node: str, state: NodeAdminState, reason: str, **more: Any) -> bool:
        """Set ``node``'s admin state, saying why and since when."""
        update = {"admin_state": state, "admin_reason": reason, "admin_since": self.now, **more}
        return await self._update_node(node, lambda n: n.model_copy(update=update))

    def _recover(self, d: dec.Recover) -> Write:
        key = self.keys.placement(d.vm)
        old = self.state.placements.items.get(d.vm)
        failovers = (*(old.value.failovers if old else ()), self.now)
        placement = Placement(
            node=d.to_node,
            epoch=d.epoch,
            reason=d.reason,
            failovers=failovers,
            uid=self._uid(d.vm),
        )
        compares = [Compare.mod_is(key, self._placement_rev(d.vm)), self._node_as_read(d.to_node)]
        if d.from_node not in self.state.alive.present:
            # The dead node must not have come back since we looked: whichever commits
            # first wins, and the other side kills or skips.
            compares.append(Compare.absent(self.keys.alive(d.from_node)))
        return Write(tuple(compares), (Put(key, encode(placement)),))

    def _leave_failed(self, d: dec.LeaveFailed) -> Write | bool:
        placed = self.state.placements.items.get(d.vm)
        status = self.state.statuses.items.get(d.vm)
        epoch = max(placed.value.epoch if placed else 0, status.value.epoch if status else 0)
        failed = VMStatus(
            vm=d.vm,
            node="",
            epoch=epoch,
            state=VMState.FAILED,
            since=self.now,
            last_error=d.reason,
            left_failed=not d.retry,
            uid=self._uid(d.vm),
        )
        if status and status.value.model_copy(update={"since": self.now}) == failed:
            return True  # already said
        if d.retry and placed is not None and placed.value.node in self.state.alive.present:
            return True  # it has a live home; its agent reports for it
        illegal = vm_status_change(status.value if status else None, failed)
        if illegal is not None:  # (never so far: the mark is on no node, a run of its own)
            log.warning("not leaving %s failed: %s", d.vm, illegal)
            return False
        ops: list[Put | Delete] = [Put(self.keys.status(d.vm), encode(failed))]
        compares = [Compare.mod_is(self.keys.placement(d.vm), self._placement_rev(d.vm))]
        if not d.retry and placed is not None:
            ops.append(Delete(self.keys.placement(d.vm)))
        return Write(tuple(compares), tuple(ops))

    async def _failback(self, d: dec.Failback) -> bool:
        """A live migration when both nodes are alive; a cold move when not, when the
        scheduler says they cannot migrate live between them, or when the VM's last live
        failback failed."""
        alive = self.state.alive.present
        placed = self.state.placements.items.get(d.vm)
        if placed is None or placed.value.node != d.from_node or placed.value.moving_to:
            return False
        if d.live and d.from_node in alive and d.to_node in alive:
            records = await read_migrations(self.store, self.keys)
            mine = sorted(
                (s.value for s in records.items.values() if s.value.vm == d.vm),
                key=lambda m: m.created,
            )
            if any(m.active for m in mine):
                return False  # a move is under way already
            last = mine[-1] if mine else None
            live_failed = (
                last is not None
                and last.requested_by == "failback"
                and last.state in (MigrationState.FAILED, MigrationState.CANCELLED)
                and last.epoch == placed.value.epoch
            )
            if not live_failed:
                made = await create_migration(
                    self.store,
                    self.keys,
                    d.vm,
                    d.from_node,
                    d.to_node,
                    placed.value.epoch,
                    MigrationKind.LIVE,
                    "failback",
                    now=self.now,
                )
                return made is not None
        return await self._cold_move(d)

    async def _cold_move(self, d: dec.Failback) -> bool:
        """Phase one of a cold move: ask the current owner to shut the VM down. Phase two
        (:meth:`finish_moves`) places it on the target once it reports stopped."""
        placed = self.state.placements.items.get(d.vm)
        if placed is None or placed.value.node != d.from_node or placed.value.moving_to:
            return False
        moving = placed.value.model_copy(update={"moving_to": d.to_node, "reason": d.reason})
        key = self.keys.placement(d.vm)
        result = await self.store.txn(
            [Compare.mod_is(key, placed.mod_revision)], [Put(key, encode(moving))]
        )
        return result.succeeded

    async def finish_moves(self) -> list[str]:
        """Phase two of cold moves: a VM its old owner reports stopped (or whose old owner is
        dead, which normal recovery handles) goes to its target with epoch + 1."""
        reasons: list[str] = []
        writes: list[Write] = []
        for vm, placed in self.state.placements.items.items():
            p = placed.value
            if not p.moving_to:
                continue
            status = self.state.statuses.items.get(vm)
            stopped = (
                status is not None
                and status.value.node == p.node
                and status.value.epoch == p.epoch
                and status.value.state is VMState.STOPPED
            )
            if not stopped:
                continue
            reason = f"vm {vm} moved from {p.node} to {p.moving_to}: stopped there, starting here"
            new = Placement(
                node=p.moving_to,
                epoch=p.epoch + 1,
                reason=reason,
                failovers=p.failovers,
                uid=p.uid,
            )
            key = self.keys.placement(vm)
            writes.append(
                Write((Compare.mod_is(key, placed.mod_revision),), (Put(key, encode(new)),))
            )
            reasons.append(reason)
        done = await commit_all(self.store, writes)
        return [reason for reason, ok in zip(reasons, done, strict=True) if ok]

    async def _update_node(self, name: str, change: Callable[[Node], Node]) -> bool:
        stored = self.state.nodes.items.get(name)
        if stored is None:
            return False
        key = self.keys.node(name)
        result = await self.store.txn(
            [Compare.mod_is(key, stored.mod_revision)], [Put(key, encode(change(stored.value)))]
        )
        return result.succeeded
