"""The node agent: makes this host match what etcd says, and says what it did.

Each cycle reads specs, placements and statuses, asks the driver what runs here, plans with
:func:`~hvcluster.agent.reconcile.plan_local` and carries the actions out:

* a start only after a transaction that checks the placement is the one seen and this node's
  ``alive`` key is still bound to our lease (the fencing token rule);
* a kill at once when a VM's placement went elsewhere;
* status reports guarded by the placement, so only the current owner ever writes one, and
  by the status they replace: a move the VM lifecycle does not list is refused and logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hvcluster.agent.disks import VolumeDisks
from hvcluster.agent.guestcpu import with_guest_cpu
from hvcluster.agent.reconcile import (
    Kill,
    Limits,
    LocalVM,
    Report,
    ReportStopped,
    SeenPlacement,
    Shutdown,
    Start,
    plan_local,
)
from hvcluster.agent.resources import Resources
from hvcluster.agent.revocation import CertificateRevoked
from hvcluster.agent.rounds import carry_out
from hvcluster.clock import SYSTEM, Clock
from hvcluster.drivers.base import Driver, HostFacts
from hvcluster.metrics import AgentMetrics
from hvcluster.models.base import Model, encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.errors import CorruptValue, DriverError, StoreError
from hvcluster.models.event import Say
from hvcluster.models.lifecycle import VMState, vm_status_change
from hvcluster.models.node import Node
from hvcluster.models.vm import Placement, VMSpec, VMStatus
from hvcluster.store.base import Compare, Put, Store, WatchEvent
from hvcluster.store.cache import WatchedCache
from hvcluster.store.follow import follow, run_cycles
from hvcluster.store.keys import Keys
from hvcluster.store.reads import decode_kv, decode_one
from hvcluster.store.state import config_from

log = logging.getLogger(__name__)


@dataclass
class NodeIdentity:
    name: str
    address: str
    api_port: int
    labels: dict[str, str] = field(default_factory=dict)
    cpus: int | None = None
    memory_mib: int | None = None
    migration_address: str = ""  # "": migrations reach it at ``address`` too

    @property
    def migration_host(self) -> str:
        """Where this host's incoming migrations (QEMU's stream, NBD disks) listen."""
        return (self.migration_address or self.address).strip("[]")


def cycle_prefixes(keys: Keys) -> dict[str, type[Model]]:
    """What an agent's cycle reads: the cluster config, every VM, placement and status."""
    return {
        keys.config: ClusterConfig,
        keys.prefix("vms"): VMSpec,
        keys.prefix("placements"): Placement,
        keys.prefix("status"): VMStatus,
    }


class NodeAgent:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        me: NodeIdentity,
        driver: Driver,
        config: ClusterConfig,
        say: Say,
        lease: Callable[[], int],
        may_start: Callable[[], str | None],
        clock: Clock = SYSTEM,
        metrics: AgentMetrics | None = None,
        timings: Callable[[], tuple[float, float]] | None = None,
        revoked_key: str | None = None,
    ) -> None:
        self.store, self.keys, self.me, self.driver = store, keys, me, driver
        # pki/revoked/<serial> of this host's certificate (None: plain etcd): its node record
        # is created only while that key is absent, in the same transaction, so that an
        # eviction can never be undone by a registration that checked just before it
        self.revoked_key = revoked_key
        # restarts and migrations it carries out (its workers' too) are counted here
        self.metrics = metrics if metrics is not None else AgentMetrics(me.name)
        self.clock = clock  # this agent's loops and its migration and storage workers'
        self.config, self.say = config, say
        self.lease = lease  # the lease alive/<me> must be bound to for a start
        # None when this node may start a VM, else why not (keepalives unconfirmed, the
        # watchdog not acknowledging feeding).
        self.may_start = may_start
        # (fence_after, lease TTL) its liveness runs with, published in the node record
        self.timings = timings
        self.crashes: dict[str, list[float]] = {}
        self.owned: dict[str, int] = {}  # vm -> placement mod revision it runs under
        # VMs placed here or run by the driver at the last cycle: their changes wake the loop
        self.mine: set[str] = set()
        self.incoming: set[str] = set()
        # VMs whose transfer out of this host is under way: their state changes (migrating,
        # paused at the end) do not wake the loop; the migration worker wakes it after.
        self.moving_out: set[str] = set()
        # A migration switching over on this host asks the loop to hold off until then
        # (monotonic clock): a cycle's reads would take CPU from the guest's resume.
        self.quiet_until = 0.0
        self._shutting: dict[str, asyncio.Task[None]] = {}
        self.wake = asyncio.Event()
        self.cycles = 0
        # What each cycle reads (the VMs, placements, statuses of the whole cluster, and its
        # config): read once, then kept current by a watch (store/cache.py), so an agent does
        # not read 8,000 VMs three times a second; each read is still the store as of then.
        self.cache = WatchedCache(store, cycle_prefixes(keys), now=clock.now, sleep=clock.sleep)
        self.facts: HostFacts | None = None
        self.resources = Resources()  # switches and volumes, as agent/resources.py found them
        self.disks = VolumeDisks(store, keys, me.name, lease)
        self.disk_busy: dict[str, str] = {}  # vm -> why its disks are busy, said once
        self._refused: dict[str, str] = {}  # vm -> why its status was not written, logged once

    def close(self) -> None:
        """Stop the cache's watch (the agent stops; what it knows is dropped with it)."""
        self.cache.cancel()

    # --- registration of the node record ---------------------------------------------
    async def register_node(self, facts: HostFacts | None = None) -> Node:
        """Write this host's part of ``nodes/<me>`` (CAS), keeping what others wrote there."""
        if facts is not None and facts is not self.facts:
            facts = await with_guest_cpu(facts, self.driver)  # the driver asked once per facts
        facts = facts or self.facts
        if facts is None:
            raise ValueError("register_node needs the host's facts the first time")
        self.facts = facts
        capacity = facts.capacity.model_copy(
            update={
                k: v
                for k, v in (("cpus", self.me.cpus), ("memory_mib", self.me.memory_mib))
                if v is not None
            }
        )
        mine = {
            "address": self.me.address,
            "migration_address": self.me.migration_address,
            "api_port": self.me.api_port,
            "capacity": capacity,
            "inventory": facts.inventory,
            "labels": self.me.labels,
            "registered_at": self.clock.wall(),
            **self.resources.fields(),
        }
        if self.timings is not None:
            mine["fence_after_s"], mine["lease_ttl_s"] = self.timings()
        node = await self._write_node(mine)
        if node is None:
            raise CertificateRevoked(
                f"node {self.me.name}: this host's certificate was revoked (evicted); "
                "its node record was not written again"
            )
        return node

    async def report_resources(self, resources: Resources) -> Node | None:
        """Write this host's switches and volumes into ``nodes/<me>`` (CAS), nothing else;
        None if the node is not registered yet (registration will write them)."""
        self.resources = resources
        return await self._write_node(resources.fields(), create=False)

    async def _write_node(self, mine: dict[str, Any], create: bool = True) -> Node | None:
        """``mine`` over ``nodes/<me>`` as read (CAS), or a new record with ``create``; None
        when there is none and ``create`` is off, or this host's certificate is revoked."""
        key = self.keys.node(self.me.name)
        while True:
            kv = await self.store.get(key)
            found = await decode_one(Node, kv)
            if found is None or isinstance(found, CorruptValue):
                if not create:
                    return None
                if found is not None:
                    await self.say(
                        "node.corrupt",
                        f"node/{self.me.name}",
                        f"{found}; rewriting it from this host's facts",
                    )
                node = Node(name=self.me.name, **mine)
            else:
                node = found.value.model_copy(update=mine)
            compares = [Compare.mod_is(key, kv.mod_revision if kv else 0)]
            if kv is None and self.revoked_key is not None:
                compares.append(Compare.absent(self.revoked_key))
            result = await self.store.txn(compares, [Put(key, encode(node))])
            if result.succeeded:
                return node
            if self.revoked_key is not None and await self.store.get(self.revoked_key):
                return None

    # --- the loop --------------------------------------------------------------------
    async def run(self, interval: float = 1.0) -> None:
        # (a bug must not stop the agent: its VMs would be fenced)
        await run_cycles(
            "reconcile",
            self._cycle_when_quiet,
            self.wake,
            interval,
            self.clock.sleep,
            (DriverError,),
        )

    async def _cycle_when_quiet(self) -> None:
        """A cycle, once a guest switching over here is done (see ``quiet_until``)."""
        hold = self.quiet_until - self.clock.now()
        if hold > 0:
            await self.clock.sleep(hold)
        await self.cycle()

    async def watch_changes(self, kind: str) -> None:
        """Wake the loop when a change under ``kind`` (``vms`` or ``placements``) may concern
        this host: a VM placed here or running here at the last cycle (:attr:`mine`), or a
        placement that now names this node. Not for others' VMs: with 64 nodes each change
        would cost every agent a cycle; the interval's cycle still runs meanwhile. Nor for a
        VM in :attr:`incoming` (as :meth:`watch_driver`): a migration's flip moves its
        placement while the target resumes the guest, and a cycle leaves that VM alone."""
        prefix = self.keys.prefix(kind)

        def seen(event: WatchEvent) -> None:
            name = event.key[len(prefix) :]
            if name in self.incoming:
                return
            if name in self.mine or (kind == "placements" and self._names_me(event)):
                self.wake.set()

        await follow(self.store, prefix, seen, sleep=self.clock.sleep)

    def _names_me(self, event: WatchEvent) -> bool:
        found = decode_kv(Placement, event)  # a corrupt one: the next cycle reports it
        return found is not None and found.value.node == self.me.name

    async def watch_driver(self) -> None:
        """Wake the loop when a VM changes state here, except a VM a migration worker is
        moving (:attr:`incoming`, :attr:`moving_out`): it wakes the loop itself when it lets
        go, and the interval's cycle still runs meanwhile. Those changes come just as the
        transfer starts and as it ends: a cycle then (the whole store read, a status
        written) would take CPU from the two QEMUs moving the guest and from its resume."""
        async for event in self.driver.events():
            log.info("driver: vm %s is %s %s", event.name, event.state.value, event.reason)
            if event.name not in self.incoming and event.name not in self.moving_out:
                self.wake.set()

    async def cycle(self) -> list[str]:
        """One pass; returns what it did, a sentence per action."""
        self.cycles += 1
        view = await self.cache.read()  # all at one revision, every write before it included
        specs = view.decoded(self.keys.prefix("vms"), VMSpec)
        placements = view.decoded(self.keys.prefix("placements"), Placement)
        statuses = view.decoded(self.keys.prefix("status"), VMStatus)
        # Read each cycle: an admin's change of the local restart limits applies at once
        # (the timings stay as the agent started with them: see models/config.RESTART_NEEDED).
        # A corrupt config: the defaults (the controller reports it).
        self.config = config_from(view, self.keys)
        local = {
            vm.name: LocalVM(vm.name, vm.state, vm.pid, vm.epoch, vm.since, vm.cpu_model, vm.reason)
            for vm in await self.driver.list()
        }
        seen = {
            name: SeenPlacement(s.value, s.raw, s.mod_revision)
            for name, s in placements.items.items()
        }
        now = self.clock.wall()
        actions = plan_local(
            me=self.me.name,
            now=now,
            specs={n: s.value for n, s in specs.items.items()},
            placements=seen,
            statuses={n: s.value for n, s in statuses.items.items()},
            local=local,
            crashes={n: tuple(t) for n, t in self.crashes.items()},
            limits=Limits(self.config.local_restart_threshold, self.config.local_restart_period_s),
            incoming=frozenset(self.incoming),
            unreadable=frozenset(specs.unreadable | placements.unreadable),
        )
        self._track_owned(seen, local)
        self.mine = set(local) | {n for n, s in seen.items() if s.placement.node == self.me.name}
        said: list[str] = []
        round_: list[Start | Report] = []  # written many to a txn (agent/rounds.py)
        for action in actions:
            if isinstance(action, Start | Report):
                round_.append(action)
                continue
            said += await carry_out(self, round_, statuses, now)
            round_ = []
            if sentence := await self._do(action):
                said.append(sentence)
        said += await carry_out(self, round_, statuses, now)
        await self._hold_disk_locks({n: s.value for n, s in specs.items.items()})
        return said

    async def _hold_disk_locks(self, specs: dict[str, VMSpec]) -> None:
        running = {
            vm.name
            for vm in await self.driver.list()
            if vm.state not in (VMState.STOPPED, VMState.FAILED)
        }
        await self.disks.sweep(running, specs, self.clock.now())

    def _track_owned(self, seen: dict[str, SeenPlacement], local: dict[str, LocalVM]) -> None:
        self.owned = {
            name: seen[name].mod_revision
            for name, vm in local.items()
            if name in seen
            and seen[name].placement.node == self.me.name
            and vm.state not in (VMState.STOPPED, VMState.FAILED)
        }

    def owned_placements(self) -> dict[str, int]:
        return dict(self.owned)

    async def _do(self, action: Kill | Shutdown | ReportStopped) -> str | None:
        """Carry out an action that is not a start nor a report (those: :func:`carry_out`)."""
        match action:
            case Kill():
                await self.kill_now({action.vm}, action.reason)
                return f"killed {action.vm}: {action.reason}"
            case Shutdown():
                if action.vm not in self._shutting:
                    self._shutting[action.vm] = asyncio.create_task(self._shutdown(action))
                return None
            case ReportStopped():
                if await self._report_unplaced(action.vm, action.epoch, 0.0, action.seen):
                    return action.reason
                return None
        raise AssertionError(f"unknown action {action!r}")

    async def _shutdown(self, action: Shutdown) -> None:
        try:
            info = await self.driver.shutdown(action.vm, self.config.shutdown_timeout_s)
            reported = False
            if action.seen is not None:
                status = VMStatus(
                    vm=action.vm,
                    node=self.me.name,
                    epoch=action.seen.placement.epoch,
                    state=VMState.STOPPED,
                    since=info.since or self.clock.wall(),
                    uid=action.seen.placement.uid,
                )
                reported = await self.report(status, action.seen)
            if not reported:  # unplaced meanwhile (a stop removes the placement), or before
                await self._report_unplaced(action.vm, info.epoch, info.since)
            await self.say(
                "vm.stopped", f"vm/{action.vm}", f"{action.reason}: stopped on {self.me.name}"
            )
        except (DriverError, StoreError) as e:
            log.warning("shutdown of %s failed: %s", action.vm, e)
        finally:
            self._shutting.pop(action.vm, None)
            self.wake.set()

    async def kill_now(self, names: set[str], reason: str = "placement changed") -> None:
        for name in sorted(names):
            try:
                await self.driver.kill(name)
            except DriverError as e:
                log.warning("kill of %s failed: %s", name, e)
            except Exception:  # a bug: the other VMs must still die (they start elsewhere)
                log.exception("kill of %s failed unexpectedly; killing the others", name)
                continue
            self.owned.pop(name, None)
            await self.say("vm.killed", f"vm/{name}", f"killed {name} on {self.me.name}: {reason}")

    async def _report_unplaced(
        self, name: str, epoch: int, since: float, elsewhere: SeenPlacement | None = None
    ) -> bool:
        """A VM stopped here with no placement left (desired stopped), or placed on another
        node (``elsewhere``, as read): its status says so. Else it would show it running
        still, and the controller would wait for it to stop here before starting it
        anywhere, forever. Written only while the placement is still as read (absent, or
        ``elsewhere``'s bytes) and its status is this host's run of it at ``epoch``."""
        found = decode_kv(VMStatus, await self.store.get(self.keys.status(name)))
        if found is None or (found.value.node, found.value.epoch) != (self.me.name, epoch):
            return False
        status = found.value.model_copy(
            update={"state": VMState.STOPPED, "pid": None, "since": since or self.clock.wall()}
        )
        held = await self.status_held(status)
        if held is None:
            return False
        key = self.keys.placement(name)
        placed = Compare.absent(key) if elsewhere is None else Compare.value_is(key, elsewhere.raw)
        guard = [placed, *held]
        result = await self.store.txn(guard, [Put(self.keys.status(name), encode(status))])
        return result.succeeded

    async def report(self, status: VMStatus, seen: SeenPlacement) -> bool:
        held = await self.status_held(status)
        if held is None:
            return False
        guard = [Compare.value_is(self.keys.placement(status.vm), seen.raw), *held]
        result = await self.store.txn(guard, [Put(self.keys.status(status.vm), encode(status))])
        return result.succeeded

    async def status_held(self, status: VMStatus) -> list[Compare] | None:
        """The compare that holds ``status/<vm>`` as read, so that ``status`` replaces the
        very status it was checked against (:func:`vm_status_change`); None, logged once per
        reason, when that move is not in the VM lifecycle: it is not written."""
        key = self.keys.status(status.vm)
        kv = await self.store.get(key)
        found = decode_kv(VMStatus, kv)  # unreadable: overwritten, as a new run
        if not self.may_replace(found.value if found is not None else None, status):
            return None
        return [Compare.mod_is(key, kv.mod_revision) if kv else Compare.absent(key)]

    def may_replace(self, before: VMStatus | None, status: VMStatus) -> bool:
        """Whether ``status`` may replace ``before`` in the VM lifecycle; a refusal is
        logged once per reason."""
        why = vm_status_change(before, status)
        if why is not None:
            if self._refused.get(status.vm) != why:
                self._refused[status.vm] = why
                log.warning("not writing the status of %s: %s", status.vm, why)
            return False
        self._refused.pop(status.vm, None)
        return True
