"""A whole cluster in one event loop: real daemons (node agent, liveness, controller and
election) on one memory store, each host with an in-memory sim driver. Fast, and with real
decisions: the only thing simulated is the hypervisor."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from hvcluster.agent.config import AgentConfig
from hvcluster.agent.daemon import Daemon, cancel_all
from hvcluster.clock import SYSTEM, ManualClock
from hvcluster.controller.loop import Controller
from hvcluster.drivers.sim import SimDriver
from hvcluster.drivers.sim.links import SimHostLinks
from hvcluster.drivers.sim.model import SimParams
from hvcluster.drivers.sim.state import SimHost
from hvcluster.models.base import decode, encode, parse
from hvcluster.models.config import ClusterConfig
from hvcluster.models.event import Event
from hvcluster.models.lifecycle import VMState
from hvcluster.models.node import Node
from hvcluster.models.storage import MARKER, CreatedDisk, Volume
from hvcluster.models.vm import Disk, Placement, VMSpec, VMStatus
from hvcluster.store.events import EventLog
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from hvcluster.watchdog.node import MemoryWatchdog
from tests.tokens import api_client
from tests.waiting import wait_for

# Short timings keep the suite fast; their ratios are the defaults'.
FAST = ClusterConfig(
    name="sim",
    lease_ttl_s=2.0,
    keepalive_interval_s=0.4,
    fence_after_s=1.4,
    recovery_margin_s=0.6,
    evidence_interval_s=0.4,
    mass_failure_grace_s=3.0,
)


def manual_clock() -> ManualClock:
    """A manual clock started at the wall-clock time now: records hold wall times, and the
    few written with the real clock (by the test, say) stay comparable."""
    return ManualClock(time.time())


class SimCluster:
    """Every daemon, the store and the sim drivers run on one :class:`ManualClock`: nothing
    moves until a wait moves it (:meth:`wait_for`), so a test takes the CPU time of its
    events, not their seconds. ``real_time``: on the real clocks instead."""

    def __init__(
        self, tmp: Path, config: ClusterConfig = FAST, cpus: int = 4, real_time: bool = False
    ) -> None:
        self.tmp = tmp
        self.config = config
        self.cpus = cpus
        self.clock = None if real_time else manual_clock()
        clock = self.clock
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
        self.cpu_models: dict[str, str] = {}  # node -> its sim host's (and guests') CPU model
        self.cpu_provides: dict[str, tuple[str, ...]] = {}  # node -> models it gives guests

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
        """Start node ``name``; its host has the NICs ``nics`` (uplinks for external
        switches) and bridges made in memory (:class:`SimHostLinks`), never real ones."""
        cfg = AgentConfig(node=name, cluster="sim", run_dir=self.tmp / name, driver="sim")
        driver = SimDriver(
            host=SimHost(
                cpus=self.cpus,
                memory_mib=8192,
                check_disks=False,
                host_cpu=self.cpu_models.get(name, "sim-cpu"),
                guest_cpu_models=self.cpu_provides.get(name, ()),
            ),
            params=SimParams(boot_s=0.3, shutdown_s=0.2),
            clock=self.clock,
        )
        links = self.links[name] = SimHostLinks(driver)
        for nic in nics:
            links.add_nic(nic)
        clock = self.clock
        daemon = Daemon(
            cfg, store=self.store, driver=driver, serve_api=False, links=links,
            watchdog=MemoryWatchdog(clock.now) if clock else MemoryWatchdog(),
            clock=clock or SYSTEM,
        )  # fmt: skip
        self.daemons[name], self.drivers[name] = daemon, driver
        self.tasks[name] = asyncio.create_task(daemon.run(), name=f"daemon-{name}")
        await self.wait_for(lambda: self.alive(name), 10, f"{name} to register")
        # registered: its lease and alive key; its node record (inventory) is written next
        await self.wait_for(
            lambda: self.store.get(self.keys.node(name)), 10, f"{name}'s node record"
        )

    async def crash(self, name: str) -> None:
        """The host dies: its daemon stops at once and its VMs with it."""
        task = self.tasks.pop(name)
        await cancel_all([task])
        driver = self.drivers[name]
        for vm in await driver.list():
            with contextlib.suppress(Exception):
                await driver.kill(vm.name)

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

    async def running_on(self, vm: str) -> str | None:
        """The node whose driver really runs ``vm`` (None if none), asserting never two."""
        hosts = []
        for name, driver in self.drivers.items():
            if name not in self.tasks:
                continue
            for info in await driver.list():
                if info.name == vm and info.state is VMState.RUNNING:
                    hosts.append(name)
        assert len(hosts) <= 1, f"{vm} runs on {hosts} at once"
        return hosts[0] if hosts else None

    async def event_list(self, kind: str | None = None, subject: str | None = None) -> list[Event]:
        found = [e.event for e in await self.events.recent(10_000)]
        return [
            e
            for e in found
            if (kind is None or e.kind == kind) and (subject is None or e.subject == subject)
        ]

    # --- writing (as the API would) ------------------------------------------------
    async def create_vm(self, name: str, **spec: Any) -> VMSpec:
        vm = parse(VMSpec, {"name": name, "memory_mib": 256, "uid": uuid.uuid4().hex, **spec})
        await self.store.put(self.keys.vm(name), encode(vm))
        return vm

    async def add_volume(self, name: str, path: Path | None = None) -> Path:
        """A shared volume (a directory of this machine, which every sim host sees; default
        ``<tmp>/vol-<name>``) prepared as an admin does (its marker with a new id: what 'hvc
        volume mark' writes), then recorded as 'hvc volume add' does; its path."""
        path = path if path is not None else self.tmp / f"vol-{name}"
        volume = Volume(name=name, path=str(path), id=place_marker(path))
        await self.store.put(self.keys.volume(name), encode(volume))
        return path

    async def created_by_the_cluster(self, vm: str, volume: str, path: str) -> None:
        """Record the file ``volume:path`` as one the cluster created for ``vm`` (what an
        agent writes when it creates a disk): only such files are ever deleted."""
        disk = Disk(volume=volume, path=path)
        record = CreatedDisk(file=disk.file, vm=vm, node="n1", created_at=self.now())
        await self.store.put(self.keys.created_disk(disk.file), encode(record))

    # --- waiting -------------------------------------------------------------------
    async def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """:func:`tests.waiting.wait_for`, on the cluster's clock (moving it, if manual)."""
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

    async def cycles_pass(
        self,
        counters: dict[str, Callable[[], int]],
        n: int = 2,
        meanwhile: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Wait until each loop's cycle counter (by name) has grown by ``n``: with n=2 a
        whole cycle of each began after this call and ended (evidence that it decided on
        what is there now). ``meanwhile`` (its asserts) runs on every poll."""
        start = {what: counter() for what, counter in counters.items()}

        async def passed() -> bool:
            if meanwhile is not None:
                await meanwhile()
            return all(c() >= start[what] + n for what, c in counters.items())

        await self.wait_for(passed, 10, f"{n} more cycles of {', '.join(counters)}")

    async def decided(
        self, after: float | None = None, meanwhile: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Positive evidence that the controller decided on the cluster as of ``after``
        (a time of its clock, default now): its clock passed it, then a whole cycle of the
        leader began and ended. What a negative assert ('nothing moved') waits for."""
        if after is not None:
            await self.wait_for(lambda: self.now() >= after, after - self.now() + 10, "the time")
        leader = await self.wait_for(self.leader, 10, "a leading controller")
        await self.cycles_pass({"the controller": lambda: leader.cycles}, meanwhile=meanwhile)

    async def worker_cycles(
        self, node: str, meanwhile: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """A whole cycle of ``node``'s migration and storage move workers, and of the
        controller and its migration coordinator, ran after this call: whatever they would
        retry or move has had its chance. ``meanwhile`` (its asserts) runs on every poll."""
        daemon = self.daemons[node]
        assert daemon.migrations is not None and daemon.storage is not None
        migrations, storage = daemon.migrations, daemon.storage
        leader: Controller = await self.wait_for(self.leader, 10, "a leading controller")
        counters = {
            f"{node}'s migration worker": lambda: migrations.cycles,
            f"{node}'s storage move worker": lambda: storage.cycles,
            "the controller": lambda: leader.cycles,
            "the migration coordinator": lambda: leader.migrations.cycles,
        }
        await self.cycles_pass(counters, meanwhile=meanwhile)

    async def wait_running(self, vm: str, timeout: float = 15, not_on: str | None = None) -> str:
        async def where() -> str | None:
            host = await self.running_on(vm)
            return host if host and host != not_on else None

        node: str = await self.wait_for(where, timeout, f"{vm} running (not on {not_on})")
        return node


def place_marker(path: Path) -> str:
    """The directory ``path`` with a volume marker holding a new id, as an admin leaves it."""
    path.mkdir(parents=True, exist_ok=True)
    volume_id = uuid.uuid4().hex
    (path / MARKER).write_text(volume_id + "\n")
    return volume_id


@contextlib.asynccontextmanager
async def with_api(cluster: SimCluster) -> AsyncIterator[httpx.AsyncClient]:
    """The cluster's REST API in-process, as n1 serves it, with an admin token; the cluster
    is stopped after."""
    try:
        async with api_client(cluster.store, cluster.keys, "n1") as api:
            yield api
    finally:
        await cluster.stop()


async def node_record(cluster: SimCluster, name: str) -> Node:
    kv = await cluster.store.get(cluster.keys.node(name))
    assert kv is not None
    return decode(Node, kv.key, kv.value)
