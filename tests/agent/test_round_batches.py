"""An agent given 150 VMs at once starts them with their statuses written many to a
transaction (starting, then running), not two transactions and two reads each; every start
still guarded by its placement and the agent's lease. A sim driver, the memory store."""

from __future__ import annotations

import pytest

from hvcluster.agent.node import NodeAgent, NodeIdentity
from hvcluster.drivers.sim.driver import SimDriver
from hvcluster.models.base import decode, encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.lifecycle import VMState
from hvcluster.models.node import NodeAlive
from hvcluster.models.vm import Placement, VMSpec, VMStatus
from hvcluster.store.base import Put
from hvcluster.store.keys import Keys
from tests.counting import CountingStore

pytestmark = pytest.mark.timeout(60)
KEYS = Keys("t")
VMS = 150


async def test_150_starts_of_one_round_take_a_few_transactions() -> None:
    store, driver = CountingStore(), SimDriver()
    said: list[str] = []

    async def say(kind: str, subject: str, reason: str) -> None:
        said.append(kind)

    lease = await store.grant(600)
    alive = NodeAlive(node="n1", lease=lease.id, since=0.0)
    await store.put(KEYS.alive("n1"), encode(alive), lease=lease.id)
    puts = []
    for i in range(VMS):
        spec = VMSpec(name=f"vm{i:03}", memory_mib=64)
        puts.append(Put(KEYS.vm(spec.name), encode(spec)))
        puts.append(Put(KEYS.placement(spec.name), encode(Placement(node="n1", epoch=1))))
    for i in range(0, len(puts), 100):
        await store.txn([], puts[i : i + 100])
    agent = NodeAgent(
        store, KEYS, NodeIdentity("n1", "127.0.0.1", 8440), driver, ClusterConfig(name="t"),
        say, lease=lambda: lease.id, may_start=lambda: None,
    )  # fmt: skip
    try:
        store.txns = 0
        await agent.cycle()
        assert store.txns <= 6, f"{store.txns} txns for {VMS} starts"  # 2 waves of 2
        assert said.count("vm.started") == VMS
        for vm in await driver.list():
            kv = await store.get(KEYS.status(vm.name))
            assert kv is not None and vm.state is VMState.RUNNING
            assert decode(VMStatus, kv.key, kv.value).state is VMState.RUNNING
        assert len(await driver.list()) == VMS
        store.txns = 0
        await agent.cycle()
        assert store.txns == 0, "nothing to write in a steady round"
    finally:
        agent.close()
        await driver.close()
        await store.close()


async def test_a_start_whose_lease_is_not_ours_writes_nothing() -> None:
    store, driver = CountingStore(), SimDriver()

    async def say(kind: str, subject: str, reason: str) -> None:
        return None

    lease = await store.grant(600)
    alive = NodeAlive(node="n1", lease=lease.id, since=0.0)
    await store.put(KEYS.alive("n1"), encode(alive), lease=lease.id)
    for name in ("a", "b"):
        await store.put(KEYS.vm(name), encode(VMSpec(name=name, memory_mib=64)))
        await store.put(KEYS.placement(name), encode(Placement(node="n1", epoch=1)))
    agent = NodeAgent(
        store, KEYS, NodeIdentity("n1", "127.0.0.1", 8440), driver, ClusterConfig(name="t"),
        say, lease=lambda: lease.id + 1, may_start=lambda: None,
    )  # fmt: skip
    try:
        await agent.cycle()
        assert await driver.list() == []
        assert await store.get(KEYS.status("a")) is None
    finally:
        agent.close()
        await driver.close()
        await store.close()
