"""The main plan counts migrations under way (in-process cluster, real agents and
controller, sim VMs): while a VM is being migrated to n2, its room on n2 is reserved and it
still counts on n1, so a new VM that prefers n2 is not put there (nor anywhere it does not
fit) until the migration has ended."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hvcluster.models.config import MigrationSettings
from hvcluster.models.lifecycle import MigrationState
from hvcluster.store.migrations import read_migrations
from tests.sim.cluster import FAST, SimCluster, with_api

pytestmark = pytest.mark.timeout(90)

# 1 GiB at 128 MiB/s: the move takes about 8 s.
SLOW = FAST.model_copy(update={"migration": MigrationSettings(max_bandwidth_mib_s=128)})


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[SimCluster, httpx.AsyncClient]]:
    cluster = SimCluster(tmp_path, SLOW, cpus=4)
    async with with_api(cluster) as api:
        yield cluster, api


async def test_a_receiving_node_is_not_overcommitted(
    setup: tuple[SimCluster, httpx.AsyncClient],
) -> None:
    cluster, api = setup
    await cluster.start("n1", "n2")
    await cluster.create_vm("mover", vcpus=3, memory_mib=1024, ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("mover") == "n1"
    r = await api.post("/vms/mover/move", json={"to": "n2"})
    assert r.status_code == 202, r.text

    async def transferring() -> bool:
        records = await read_migrations(cluster.store, cluster.keys)
        return any(s.value.state is MigrationState.TRANSFERRING for s in records.items.values())

    await cluster.wait_for(transferring, 10, "the move transferring")
    # 2 vCPUs: n2 has 4, 3 of them on their way; n1 has 4, 3 of them in use until the flip.
    await cluster.create_vm("newbie", vcpus=2, ha={"preferred_owners": ["n2"]})

    async def said_no_room() -> bool:
        return any(
            "n2 has 1 of 4 vCPUs free" in e.reason and "n1 has 1 of 4 vCPUs free" in e.reason
            for e in await cluster.event_list("vm.failed", "vm/newbie")
        )

    await cluster.wait_for(said_no_room, 10, "newbie refused for want of room, naming both")
    assert await cluster.placement("newbie") is None
    records = await read_migrations(cluster.store, cluster.keys)
    assert all(s.value.active for s in records.items.values())  # still under way

    # Once mover is on n2, n1 has room again: newbie goes there, never on n2.
    assert await cluster.wait_running("mover", 30, not_on="n1") == "n2"
    assert await cluster.wait_running("newbie", 15) == "n1"
    placed = await cluster.event_list("vm.placed", "vm/newbie")
    assert len(placed) == 1 and "place newbie on n1" in placed[0].reason
