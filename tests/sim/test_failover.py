"""Failover in an in-process cluster: real agents, controller and election on a memory store,
simulated hypervisors."""

from __future__ import annotations

import pytest

from tests.sim.cluster import SimCluster

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
