"""A scenario's admin commands, written as intent the way the API writes it (compare-and-set
on the node record or the VM's spec, and the event the API records), stamped with the
simulation's clock. The API itself (HTTP, tokens) is not part of a simulation: what it
writes is what the controller and agents act on."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from hvcluster.models.base import Model, decode, encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.errors import Conflict, NotFound, StoreError
from hvcluster.models.event import Event
from hvcluster.models.lifecycle import NODE_LIFECYCLE, NodeAdminState
from hvcluster.models.node import Node
from hvcluster.models.vm import Placement, VMSpec
from hvcluster.store.base import Compare, Put, Store
from hvcluster.store.events import EventLog
from hvcluster.store.keys import Keys

M = TypeVar("M", bound=Model)
ACTOR = "admin"


class Admin:
    """The administrator of a simulated cluster; ``now``: the simulation's wall clock."""

    def __init__(self, store: Store, keys: Keys, now: Callable[[], float]) -> None:
        self.store, self.keys, self.now = store, keys, now
        self.events = EventLog(store, keys)

    async def _change(self, key: str, cls: type[M], change: Callable[[M], M | None]) -> bool:
        """Compare-and-set ``change`` on the record at ``key``; False if it declined."""
        for _ in range(10):
            kv = await self.store.get(key)
            if kv is None:
                raise NotFound(f"no record at {key}")
            new = change(decode(cls, kv.key, kv.value))
            if new is None:
                return False
            result = await self.store.txn([Compare.mod_is(key, kv.mod_revision)],
                                          [Put(key, encode(new))])  # fmt: skip
            if result.succeeded:
                return True
        raise StoreError(f"{key} kept changing")

    async def record(self, kind: str, subject: str, reason: str) -> None:
        event = Event(time=self.now(), kind=kind, subject=subject, reason=reason, actor=ACTOR)
        await self.events.append(event)

    async def set_node(
        self, node: str, target: NodeAdminState, clear_quarantine: bool = False,
        held: dict[str, int] | None = None,
    ) -> bool:  # fmt: skip
        """Pause, drain or resume ``node`` as the API does; False if it was so already.
        Raises :class:`Conflict` for a change its lifecycle refuses (a quarantined node
        resumed without ``clear_quarantine``)."""

        def change(current: Node) -> Node | None:
            if current.admin_state == target:
                return None
            if current.admin_state is NodeAdminState.QUARANTINED and not clear_quarantine:
                raise Conflict(f"node {node} is quarantined; resume it with clear_quarantine")
            NODE_LIFECYCLE.check(current.admin_state, target)
            fields: dict[str, object] = {"admin_state": target, "admin_reason": "scenario",
                                         "admin_since": self.now()}  # fmt: skip
            if current.admin_state is NodeAdminState.QUARANTINED:
                fields["quarantined_until"] = None
                fields["failures_forgiven_at"] = fields["admin_since"]
            if target is NodeAdminState.UP:
                fields["failback_held"] = held or {}
            return current.model_copy(update=fields)

        changed = await self._change(self.keys.node(node), Node, change)
        if changed:
            kind = {NodeAdminState.PAUSED: "node.paused", NodeAdminState.DRAINING:
                    "node.draining"}.get(target, "node.resumed")  # fmt: skip
            await self.record(kind, f"node/{node}", f"{target.value} by the scenario")
        return changed

    async def away_from(self, node: str) -> dict[str, int]:
        """VMs that would fail back to ``node`` but are placed elsewhere, each with its
        placement epoch (what a resume with failback ``none`` holds where they are)."""
        held = {}
        specs = {kv.key.rsplit("/", 1)[-1]: decode(VMSpec, kv.key, kv.value)
                 for kv in (await self.store.range(self.keys.prefix("vms"))).kvs}  # fmt: skip
        for kv in (await self.store.range(self.keys.prefix("placements"))).kvs:
            placement = decode(Placement, kv.key, kv.value)
            vm = kv.key.rsplit("/", 1)[-1]
            spec = specs.get(vm)
            if spec and placement.node != node and node in spec.ha.preferred_owners:
                held[vm] = placement.epoch
        return dict(sorted(held.items()))

    async def set_desired(self, vm: str, desired: str) -> bool:
        """Start or stop ``vm`` (its spec's desired state)."""

        def change(spec: VMSpec) -> VMSpec | None:
            if spec.desired_state == desired:
                return None
            return spec.model_copy(update={"desired_state": desired})

        changed = await self._change(self.keys.vm(vm), VMSpec, change)
        if changed:
            kind = "vm.start_requested" if desired == "running" else "vm.stop_requested"
            await self.record(kind, f"vm/{vm}", f"{desired} by the scenario")
        return changed

    async def set_config(self, config: ClusterConfig, what: str) -> None:
        await self.store.put(self.keys.config, encode(config))
        await self.record("cluster.config_changed", "cluster", what)
