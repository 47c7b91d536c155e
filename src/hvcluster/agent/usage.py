"""This host's measured CPU use, sampled often and published rarely at ``usage/<node>``.

Every ``sample_s`` the agent asks its driver for the host's busy cores (qemu: /proc/stat;
sim: its model or what a test set) and each running VM's (qemu: its QEMU process's CPU time);
every ``publish_s`` it puts the averages over the cluster's ``balance.cpu_window_s`` in one
small key of its own, for the balancer. One put per node per ``publish_s`` (30 s by default),
nothing else written: etcd is spared a stream of measures that only the balancer reads, and
only every half hour.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from hvcluster.drivers.base import Driver
from hvcluster.models.base import encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.errors import DriverError
from hvcluster.models.lifecycle import VMState
from hvcluster.models.usage import NodeUsage
from hvcluster.store.base import Store
from hvcluster.store.follow import run_cycles
from hvcluster.store.keys import Keys
from hvcluster.store.state import read_config


class UsageSamples:
    """Samples of one host kept for a window, and their averages. Pure (times come in)."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float | None, dict[str, float]]] = deque()

    def add(self, at: float, host: float | None, vms: dict[str, float]) -> None:
        self.samples.append((at, host, vms))

    def average(self, node: str, window_s: float) -> NodeUsage | None:
        """The averages of the samples of the last ``window_s`` (older ones are dropped); a
        VM's over the samples it is in (one just started or arrived has fewer)."""
        if not self.samples:
            return None
        newest = self.samples[-1][0]
        while self.samples and self.samples[0][0] < newest - window_s:
            self.samples.popleft()
        hosts = [h for _, h, _ in self.samples if h is not None]
        others = [max(0.0, h - sum(v.values())) for _, h, v in self.samples if h is not None]
        per_vm: dict[str, list[float]] = {}
        for _, _, vms in self.samples:
            for name, cores in vms.items():
                per_vm.setdefault(name, []).append(cores)
        return NodeUsage(
            node=node,
            at=newest,
            window_s=newest - self.samples[0][0],
            host_cores=round(sum(hosts) / len(hosts), 3) if hosts else None,
            other_cores=round(sum(others) / len(others), 3) if others else None,
            vms={n: round(sum(c) / len(c), 3) for n, c in sorted(per_vm.items())},
        )


class UsagePublisher:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        node: str,
        driver: Driver,
        wall: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        sample_s: float = 5.0,
        publish_s: float = 30.0,
    ) -> None:
        self.store, self.keys, self.node, self.driver = store, keys, node, driver
        self.wall, self.sleep = wall, sleep
        self.sample_s, self.publish_s = sample_s, publish_s
        self.samples = UsageSamples()
        self.published_at: float | None = None
        self.puts = 0

    async def run(self) -> None:
        # (a failed round is logged; the next one, ``sample_s`` later, tries again)
        await run_cycles("CPU use", self.round, asyncio.Event(), self.sample_s, self.sleep)

    async def sample(self) -> None:
        host = await self.driver.host_cpu_cores()
        vms: dict[str, float] = {}
        for info in await self.driver.list():
            if info.state is not VMState.RUNNING:
                continue
            try:
                vms[info.name] = (await self.driver.usage(info.name)).cpu_percent / 100
            except DriverError:
                continue  # it stopped meanwhile
        self.samples.add(self.wall(), host, vms)

    async def round(self) -> None:
        """Sample; publish when ``publish_s`` has passed since the last put."""
        await self.sample()
        now = self.wall()
        if self.published_at is not None and now - self.published_at < self.publish_s:
            return
        config, _ = await read_config(self.store, self.keys)
        await self.publish(config)

    async def publish(self, config: ClusterConfig) -> NodeUsage | None:
        usage = self.samples.average(self.node, config.balance.cpu_window_s)
        if usage is None:
            return None
        await self.store.put(self.keys.usage(self.node), encode(usage))
        self.published_at = self.wall()
        self.puts += 1
        return usage
