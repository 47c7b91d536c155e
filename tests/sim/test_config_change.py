"""A change of the cluster's timings reaches an agent when it restarts; meanwhile its node
record says which it runs with, so the controller waits on those (scheduler/liveness.py)."""

from __future__ import annotations

import pytest

from hvcluster.models.node import Node
from hvcluster.store.reads import read_one
from tests.sim.cluster import FAST, SimCluster
from tests.tokens import api_client

pytestmark = pytest.mark.timeout(60)


async def published(cluster: SimCluster, name: str) -> tuple[float, float]:
    found = await read_one(cluster.store, cluster.keys.node(name), Node)
    assert found is not None
    return found.value.fence_after_s, found.value.lease_ttl_s


async def test_timings_reach_an_agent_at_its_restart(cluster: SimCluster) -> None:
    await cluster.start("n1", "n2")
    assert await published(cluster, "n1") == (FAST.fence_after_s, FAST.lease_ttl_s)

    async with api_client(cluster.store, cluster.keys) as api:
        r = await api.patch("/cluster/config", json={"settings": {"fence_after_s": 1.0}})
        assert r.status_code == 200, r.text
        assert r.json()["changes"][0]["restart_needed"] is True

    agent = cluster.daemons["n1"].agent
    assert agent is not None
    await cluster.cycles_pass({"n1 reconcile": lambda: agent.cycles})  # it ran on, unchanged
    assert agent.config.fence_after_s == 1.0  # it read the config (live settings apply)
    assert await published(cluster, "n1") == (FAST.fence_after_s, FAST.lease_ttl_s)

    await cluster.crash("n2")
    await cluster.start_node("n2")
    assert (await published(cluster, "n2"))[0] == 1.0
    assert (await published(cluster, "n1"))[0] == FAST.fence_after_s
