"""A whole cluster in one event loop: real daemons (node agent, liveness, controller and
election) on one memory store, each host with an in-memory sim driver. Fast, and with real
decisions: what is simulated is the hypervisor (the sim driver), etcd (the memory store), the
network between a node and etcd (:class:`NodeView`) and the node watchdog's kill
(:meth:`SimCluster.fence_overdue`).

On a :class:`ManualClock` nothing moves until a wait moves it, so a run takes the CPU time of
its events, not their seconds; with the same clock start and seed a run is reproducible.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hvcluster.agent.config import AgentConfig
from hvcluster.agent.daemon import Daemon
from hvcluster.clock import SYSTEM, ManualClock
from hvcluster.controller.loop import Controller
from hvcluster.drivers.sim import SimDriver
from hvcluster.drivers.sim.links import SimHostLinks
from hvcluster.drivers.sim.model import SimParams
from hvcluster.drivers.sim.state import SimHost
from hvcluster.models.base import decode, encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.event import Event
from hvcluster.models.lifecycle import VMState
from hvcluster.models.vm import Placement, VMStatus
from hvcluster.simulate.nodeview import NodeView
from hvcluster.simulate.waiting import wait_for
from hvcluster.store.events import EventLog
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from hvcluster.tasks import cancel_all
from hvcluster.watchdog.node import MemoryWatchdog

# Short timings keep runs fast; their ratios are the defaults'.
FAST = ClusterConfig(
    name="sim",
    lease_ttl_s=2.0,
    keepalive_interval_s=0.4,
    fence_after_s=1.4,
    recovery_margin_s=0.6,
    evidence_interval_s=0.4,
    mass_failure_grace_s=3.0,
)


class SimCluster:
    """Every daemon, the store and the sim drivers run on ``clock`` (``None``: on the real
    clocks instead). Each node reaches the store through its own :class:`NodeView`."""

    def __init__(
        self,
        run_dir: Path,
        config: ClusterConfig = FAST,
        clock: ManualClock | None = None,
        cpus: int = 4,
        memory_mib: int = 8192,
        seed: int = 0,
        params: SimParams | None = None,
        memory_transport: bool = False,
    ) -> None:
        """``memory_transport``: migrations connect in memory, not over loopback TCP, so
        their timing is the event loop's alone (``hvc sim``'s byte-identical replays)."""
        self.run_dir = run_dir
        self.memory_transport = memory_transport
        self.config = config
        self.cpus = cpus
        self.memory_mib = memory_mib
        self.seed = seed
        self.params = params or SimParams(boot_s=0.3, shutdown_s=0.2)
        self.clock = clock
        if clock is None:
            self.store = MemoryStore()
        else:
            self.store = MemoryStore(clock.now)
            clock.on_tick.append(self.store.expire_leases)
        self.keys = Keys("sim")
        self.events = EventLog(self.store, self.keys)
        self.daemons: dict[str, Daemon] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.drivers: dict[str, SimDriver] = {}
        self.links: dict[str, SimHostLinks] = {}
        self.views: dict[str, NodeView] = {}
        self.watchdogs: dict[str, MemoryWatchdog] = {}
        self.cpu_models: dict[str, str] = {}  # node -> its sim host's (and guests') CPU model
        self.cpu_provides: dict[str, tuple[str, ...]] = {}  # node -> models it gives guests
        self.host_cpus: dict[str, int] = {}  # node -> its CPUs, when not ``cpus``
        self.host_memory: dict[str, int] = {}  # node -> its memory (MiB), when not the default

    def monotonic(self) -> float:
        """Monotonic time as the cluster's store and daemons see it (what a store takes)."""
        return self.clock.now() if self.clock else time.monotonic()

    def use_store(self, store: MemoryStore) -> None:
        """Run on ``store`` (one that injects faults, made on :meth:`monotonic`) instead,
        before any node starts."""
        if self.clock is not None:
            self.clock.on_tick.remove(self.store.expire_leases)
            self.clock.on_tick.append(store.expire_leases)
        self.store, self.events = store, EventLog(store, self.keys)

    async def start(self, *names: str) -> None:
        await self.store.put(self.keys.config, encode(self.config))
        for name in names:
            await self.start_node(name)

    async def start_node(self, name: str, nics: tuple[str, ...] = ()) -> None:
        """Start node ``name`` (a host booted afresh: no VM runs on it); its host has the
        NICs ``nics`` (uplinks for external switches) and bridges made in memory
        (:class:`SimHostLinks`), never real ones."""
        await self.launch(name, nics)
        await self.wait_for(lambda: self.alive(name), 10, f"{name} to register")
        # registered: its lease and alive key; its node record (inventory) is written next
        await self.wait_for(
            lambda: self.store.get(self.keys.node(name)), 10, f"{name}'s node record"
        )

    async def launch(self, name: str, nics: tuple[str, ...] = ()) -> None:
        """Start node ``name``'s daemon without waiting for it to register."""
        cfg = AgentConfig(node=name, cluster="sim", run_dir=self.run_dir / name, driver="sim")
        driver = SimDriver(
            host=SimHost(
                cpus=self.host_cpus.get(name, self.cpus),
                memory_mib=self.host_memory.get(name, self.memory_mib),
                check_disks=False,
                host_cpu=self.cpu_models.get(name, "sim-cpu"),
                guest_cpu_models=self.cpu_provides.get(name, ()),
            ),
            params=self.params,
            clock=self.clock,
            seed=self.seed,
            memory_transport=self.memory_transport,
        )
        links = self.links[name] = SimHostLinks(driver)
        for nic in nics:
            links.add_nic(nic)
        clock = self.clock
        view = self.views[name] = NodeView(self.store, name)
        watchdog = MemoryWatchdog(clock.now) if clock else MemoryWatchdog()
        daemon = Daemon(
            cfg, store=view, driver=driver, serve_api=False, links=links, watchdog=watchdog,
            clock=clock or SYSTEM,
        )  # fmt: skip
        self.daemons[name], self.drivers[name], self.watchdogs[name] = daemon, driver, watchdog
        self.tasks[name] = asyncio.create_task(daemon.run(), name=f"daemon-{name}")

    async def crash(self, name: str) -> None:
        """The host dies: its daemon stops at once and its VMs with it."""
        task = self.tasks.pop(name)
        await cancel_all([task])
        await self.kill_vms(name)

    async def kill_vms(self, name: str) -> list[str]:
        """Kill every VM ``name``'s hypervisor runs (a dead host, or its watchdog firing);
        the names of those that were running."""
        driver = self.drivers[name]
        killed = []
        for vm in await driver.list():
            with contextlib.suppress(Exception):
                if vm.state is not VMState.STOPPED:
                    killed.append(vm.name)
                await driver.kill(vm.name)
        return sorted(killed)

    def watchdog_overdue(self, name: str) -> bool:
        """Has ``name``'s watchdog been fed a deadline that has passed (what makes the real
        watchdog process kill every VM of the node)?"""
        watchdog = self.watchdogs.get(name)
        return bool(watchdog and watchdog.deadlines and watchdog.deadlines[-1] <= self.monotonic())

    async def fence_overdue(self) -> dict[str, list[str]]:
        """The node watchdogs' part, which no daemon plays in a simulation: every node whose
        watchdog deadline has passed has its VMs killed. Returns node -> VMs killed."""
        fenced = {}
        for name in sorted(self.drivers):
            if self.watchdog_overdue(name):
                killed = await self.kill_vms(name)
                if killed:
                    fenced[name] = killed
        return fenced

    async def stop(self) -> None:
        for name in list(self.tasks):
            await self.crash(name)
        await self.store.close()

    # --- reading -------------------------------------------------------------------
    def alive(self, name: str) -> bool:
        d = self.daemons.get(name)
        return bool(d and d.liveness and d.liveness.registered.is_set() and name in self.tasks)

    async def placement(self, vm: str) -> Placement | None:
        kv = await self.store.get(self.keys.placement(vm))
        return decode(Placement, kv.key, kv.value) if kv else None

    async def status(self, vm: str) -> VMStatus | None:
        kv = await self.store.get(self.keys.status(vm))
        return decode(VMStatus, kv.key, kv.value) if kv else None

    async def hosts_running(self, vm: str) -> list[str]:
        """The nodes whose hypervisor really runs ``vm`` (more than one is a split brain)."""
        hosts = []
        for name in sorted(self.drivers):
            for info in await self.drivers[name].list():
                if info.name == vm and info.state is VMState.RUNNING:
                    hosts.append(name)
        return hosts

    async def event_list(self, kind: str | None = None, subject: str | None = None) -> list[Event]:
        found = [e.event for e in await self.events.recent(10_000)]
        return [
            e
            for e in found
            if (kind is None or e.kind == kind) and (subject is None or e.subject == subject)
        ]

    # --- waiting -------------------------------------------------------------------
    async def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """:func:`hvcluster.simulate.waiting.wait_for`, on the cluster's clock (moving it,
        if manual)."""
        return await wait_for(predicate, timeout, what, clock=self.clock)

    def now(self) -> float:
        """Wall time as the cluster's daemons see it."""
        return self.clock.wall() if self.clock else time.time()

    def leader(self) -> Controller | None:
        """The controller leading now, if any."""
        for name, daemon in self.daemons.items():
            if name in self.tasks and daemon.controller is not None and daemon.controller.leading:
                return daemon.controller
        return None
