"""A whole cluster in one event loop: real daemons (node agent, liveness, controller and
election) on one memory store, each host with an in-memory sim driver. Fast, and with real
decisions: the only thing simulated is the hypervisor."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from hvcluster.clock import ManualClock
from hvcluster.controller.loop import Controller
from hvcluster.models.base import decode, encode, parse
from hvcluster.models.config import ClusterConfig
from hvcluster.models.node import Node
from hvcluster.models.storage import MARKER, CreatedDisk, Volume
from hvcluster.models.vm import Disk, VMSpec
from hvcluster.simulate import cluster as simulated
from hvcluster.simulate.cluster import FAST
from tests.tokens import api_client

__all__ = ["FAST", "SimCluster", "manual_clock", "node_record", "with_api"]


BEHIND_S = 3600.0  # how far behind the real clock the tests' clusters' clocks start


def manual_clock() -> ManualClock:
    """A manual clock started an hour behind the wall clock. A virtual clock falls behind
    the real one whenever the machine is slow (it moves only when the loop is idle); starting
    it far behind makes any time stamped with the real clock where the cluster's is meant
    (the API once stamped a drain's start so, and the drain ignored its own failed moves
    on a loaded machine) fail every time, not once in a while."""
    return ManualClock(time.time() - BEHIND_S)


class SimCluster(simulated.SimCluster):
    """:class:`hvcluster.simulate.cluster.SimCluster` (the one ``hvc sim`` runs) with what
    tests add: a manual clock started now (``real_time``: the real clocks instead), VMs and
    volumes written as the API would, and waits for cycles of the loops."""

    def __init__(
        self, tmp: Path, config: ClusterConfig = FAST, cpus: int = 4, real_time: bool = False
    ) -> None:
        super().__init__(tmp, config, None if real_time else manual_clock(), cpus)
        self.tmp = tmp

    async def running_on(self, vm: str) -> str | None:
        """The node whose driver really runs ``vm`` (None if none), asserting never two."""
        hosts = [h for h in await self.hosts_running(vm) if h in self.tasks]
        assert len(hosts) <= 1, f"{vm} runs on {hosts} at once"
        return hosts[0] if hosts else None

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
        wall = cluster.clock.wall if cluster.clock is not None else time.time
        async with api_client(cluster.store, cluster.keys, "n1", now=wall) as api:
            yield api
    finally:
        await cluster.stop()


async def node_record(cluster: SimCluster, name: str) -> Node:
    kv = await cluster.store.get(cluster.keys.node(name))
    assert kv is not None
    return decode(Node, kv.key, kv.value)
