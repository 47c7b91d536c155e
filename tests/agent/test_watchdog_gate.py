"""A node whose watchdog does not acknowledge feeding starts no VM (nothing would kill it were
the node cut off while the VM starts elsewhere), and says so in an event and in its node
record; once a watchdog answers, the VM starts. A whole daemon in-process on a memory store,
feeding a real (absent, then running) ``hvc watchdog``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hvcluster.agent.config import AgentConfig
from hvcluster.agent.daemon import Daemon, cancel_all
from hvcluster.drivers.sim import SimDriver
from hvcluster.drivers.sim.model import SimParams
from hvcluster.host.network import MemoryLinks
from hvcluster.models.base import decode, encode, parse
from hvcluster.models.config import ClusterConfig
from hvcluster.models.node import Node
from hvcluster.models.vm import Placement, VMSpec
from hvcluster.store.events import EventLog
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from tests.agent.daemons import node_watchdog, wait_for

pytestmark = pytest.mark.timeout(90)

CONFIG = ClusterConfig(
    name="t",
    lease_ttl_s=2.0,
    keepalive_interval_s=0.3,
    fence_after_s=1.4,
    recovery_margin_s=0.6,
    evidence_interval_s=0.4,
)
KEYS = Keys("t")


async def _node(store: MemoryStore) -> Node | None:
    kv = await store.get(KEYS.node("n1"))
    return decode(Node, kv.key, kv.value) if kv else None


async def _said(store: MemoryStore, kind: str) -> list[str]:
    events = await EventLog(store, KEYS).recent(1000)
    return [e.event.reason for e in events if e.event.kind == kind]


async def test_no_vm_starts_where_the_watchdog_does_not_acknowledge(tmp_path: Path) -> None:
    store = MemoryStore()
    await store.put(KEYS.config, encode(CONFIG))
    # No controller: the VM is placed here by hand (the scheduler would place nothing on a
    # node whose watchdog is silent: tests/scheduler/test_watchdog_closed.py).
    cfg = AgentConfig(
        node="n1", cluster="t", run_dir=tmp_path / "n1", driver="sim", controller=False
    )
    driver = SimDriver(params=SimParams(boot_s=0.1, shutdown_s=0.1))
    daemon = Daemon(cfg, store=store, driver=driver, serve_api=False, links=MemoryLinks())
    task = asyncio.create_task(daemon.run())
    try:
        vm = parse(VMSpec, {"name": "vm1", "memory_mib": 256})
        await store.put(KEYS.vm("vm1"), encode(vm))
        await store.put(KEYS.placement("vm1"), encode(Placement(node="n1", epoch=1)))

        async def silent() -> bool:
            node = await _node(store)
            return bool(
                node and node.watchdog and not node.watchdog.acknowledging
                and await _said(store, "node.watchdog_silent")
            )  # fmt: skip

        await wait_for(silent, 30, "the node to say its watchdog does not answer")
        assert daemon.agent is not None
        cycles = daemon.agent.cycles
        await wait_for(lambda: daemon.agent.cycles >= cycles + 3, 30, "reconcile cycles")
        assert await driver.list() == [], "a VM started on a node without a watchdog"
        node = await _node(store)
        assert node is not None and node.watchdog is not None
        assert "no watchdog listens at" in node.watchdog.problem
        assert str(cfg.run_dir / "watchdog.sock") in node.watchdog.problem
        (reason,) = await _said(store, "node.watchdog_silent")
        assert "no VM starts on n1" in reason and "no watchdog listens at" in reason

        with node_watchdog(cfg.run_dir, CONFIG.fence_after_s):

            async def running() -> bool:
                return any(v.name == "vm1" for v in await driver.list())

            await wait_for(running, 30, "vm1 to start once the watchdog answers")
            node = await _node(store)
            assert node is not None and node.watchdog is not None
            assert node.watchdog.acknowledging and node.watchdog.problem == ""
            assert await _said(store, "node.watchdog_ok")
    finally:
        await cancel_all([task])
        await store.close()
