"""Failover in an in-process cluster: real agents, controller and election on a memory store,
simulated hypervisors."""

from __future__ import annotations

import pytest

from tests.sim.cluster import FAST, SimCluster

pytestmark = pytest.mark.timeout(60)


async def test_a_crashed_hosts_vm_runs_elsewhere_with_a_reason(cluster: SimCluster) -> None:
    await cluster.start("n1", "n2", "n3")
    await cluster.create_vm("web", ha={"preferred_owners": ["n2"]})
    assert await cluster.wait_running("web") == "n2"
    await cluster.crash("n2")
    new = await cluster.wait_running("web", timeout=20, not_on="n2")
    assert new in ("n1", "n3")
    placement = await cluster.placement("web")
    assert placement is not None and placement.epoch == 2 and placement.node == new
    recovered = await cluster.event_list("vm.recovered", "vm/web")
    assert len(recovered) == 1
    assert "n2" in recovered[0].reason and "alive key" in recovered[0].reason
    waits = await cluster.event_list("controller.waiting", "node/n2")
    assert waits, "the controller said why it waited"


async def test_a_deleted_alive_key_is_replaced_and_nothing_moves(cluster: SimCluster) -> None:
    await cluster.start("n1", "n2")
    await cluster.create_vm("calm", ha={"preferred_owners": ["n2"]})
    assert await cluster.wait_running("calm") == "n2"
    deleted = cluster.now()
    await cluster.store.delete(cluster.keys.alive("n2"))

    async def back() -> bool:
        return await cluster.store.get(cluster.keys.alive("n2")) is not None

    await cluster.wait_for(back, 5, "n2 to re-register")
    await cluster.wait_for(lambda: cluster.event_list("node.key_lost", "node/n2"), 5, "event")
    # the moment n2's VM would have been recovered, had the key stayed away, has passed
    await cluster.decided(after=deleted + FAST.fence_after_s + FAST.recovery_margin_s)
    placement = await cluster.placement("calm")
    assert placement is not None and placement.epoch == 1 and placement.node == "n2"
    assert await cluster.running_on("calm") == "n2"
