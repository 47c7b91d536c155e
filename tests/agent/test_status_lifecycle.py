"""The VM lifecycle is enforced where the agent writes a status: within one run (node and
placement epoch) a report that is not a move of the table is refused and logged, the stored
status stays; a legal report is written; a new run starts afresh. A sim driver, the memory
store and one real agent cycle."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from hvcluster.agent.node import NodeAgent, NodeIdentity
from hvcluster.drivers.sim.driver import SimDriver
from hvcluster.models.base import decode, encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.lifecycle import VMState
from hvcluster.models.vm import Placement, VMSpec, VMStatus
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore

pytestmark = pytest.mark.timeout(30)
KEYS = Keys("t")


async def _nothing(kind: str, subject: str, reason: str) -> None:
    return None


@pytest.fixture
async def setup() -> AsyncIterator[tuple[MemoryStore, SimDriver, NodeAgent]]:
    store, driver = MemoryStore(), SimDriver()
    agent = NodeAgent(
        store,
        KEYS,
        NodeIdentity("n1", "127.0.0.1", 8440),
        driver,
        ClusterConfig(name="t"),
        _nothing,
        lease=lambda: 0,
        may_start=lambda: None,
    )
    spec = VMSpec(name="web")
    await store.put(KEYS.vm("web"), encode(spec))
    await store.put(KEYS.placement("web"), encode(Placement(node="n1", epoch=1)))
    await driver.start(spec, 1)  # its guest runs here, at epoch 1
    try:
        yield store, driver, agent
    finally:
        agent.close()
        await driver.close()
        await store.close()


async def stored(store: MemoryStore) -> VMStatus:
    kv = await store.get(KEYS.status("web"))
    assert kv is not None
    return decode(VMStatus, kv.key, kv.value)


async def test_a_report_against_the_lifecycle_is_refused_and_logged(
    setup: tuple[MemoryStore, SimDriver, NodeAgent], caplog: pytest.LogCaptureFixture
) -> None:
    store, _, agent = setup
    # The agent said this run stopped; stopped -> running is no move of the lifecycle (a
    # stopped guest is started first).
    stopped = VMStatus(vm="web", node="n1", epoch=1, state=VMState.STOPPED)
    await store.put(KEYS.status("web"), encode(stopped))
    with caplog.at_level(logging.WARNING, logger="hvcluster.agent.node"):
        await agent.cycle()
        await agent.cycle()
    assert (await stored(store)).state is VMState.STOPPED
    refusals = [r.getMessage() for r in caplog.records if "not writing the status" in r.message]
    assert refusals == [
        "not writing the status of web: vm status stopped -> running on n1 at epoch 1 "
        "is not a move of the VM lifecycle"
    ]  # once, not every cycle


async def test_a_legal_report_and_a_new_run_are_written(
    setup: tuple[MemoryStore, SimDriver, NodeAgent],
) -> None:
    store, _, agent = setup
    starting = VMStatus(vm="web", node="n1", epoch=1, state=VMState.STARTING)
    await store.put(KEYS.status("web"), encode(starting))
    await agent.cycle()
    assert (await stored(store)).state is VMState.RUNNING  # starting -> running
    # Another run (the previous epoch's status on another node): this one starts afresh.
    old = VMStatus(vm="web", node="n2", epoch=0, state=VMState.STOPPED)
    await store.put(KEYS.status("web"), encode(old))
    await agent.cycle()
    now = await stored(store)
    assert (now.node, now.epoch, now.state) == ("n1", 1, VMState.RUNNING)
