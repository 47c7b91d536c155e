"""``resume --failback none|policy|immediate`` after a drain, in an in-process cluster (real
agents and controller, sim VMs), through the real API.

Two VMs prefer n1: ``eager`` fails back immediately by its own policy, ``lazy`` never does.
After n1 is drained (both run on n2) and resumed: ``none`` keeps both on n2, ``policy`` brings
back ``eager`` only, ``immediate`` brings back both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hvcluster.models.lifecycle import NodeAdminState
from tests.sim.cluster import FAST, SimCluster, node_record, with_api

pytestmark = pytest.mark.timeout(90)

EXPECTED_BACK = {"none": set(), "policy": {"eager"}, "immediate": {"eager", "lazy"}}


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[SimCluster, httpx.AsyncClient]]:
    cluster = SimCluster(tmp_path, FAST)
    async with with_api(cluster) as api:
        yield cluster, api


async def where(cluster: SimCluster) -> dict[str, str | None]:
    return {vm: await cluster.running_on(vm) for vm in ("eager", "lazy")}


@pytest.mark.parametrize("mode", ["none", "policy", "immediate"])
async def test_resume_failback_modes(
    setup: tuple[SimCluster, httpx.AsyncClient], mode: str
) -> None:
    cluster, api = setup
    await cluster.start("n1", "n2")
    await cluster.create_vm(
        "eager", ha={"preferred_owners": ["n1"], "failback": {"mode": "immediate"}}
    )
    await cluster.create_vm("lazy", ha={"preferred_owners": ["n1"]})
    for vm in ("eager", "lazy"):
        assert await cluster.wait_running(vm) == "n1"

    assert (await api.post("/nodes/n1/drain")).status_code == 202

    async def paused() -> bool:
        return (await node_record(cluster, "n1")).admin_state is NodeAdminState.PAUSED

    await cluster.wait_for(paused, 30, "n1 drained and paused")
    assert await where(cluster) == {"eager": "n2", "lazy": "n2"}

    r = await api.post("/nodes/n1/resume", json={"failback": mode})
    assert r.status_code == 202, r.text
    back = EXPECTED_BACK[mode]

    async def expected() -> bool:
        now = await where(cluster)
        return all((now[vm] == "n1") == (vm in back) for vm in now)

    await cluster.wait_for(expected, 30, f"{sorted(back)} back on n1")

    async def stays() -> None:  # whole cycles later, nothing else has moved
        now = await where(cluster)
        assert {vm for vm, node in now.items() if node == "n1"} == back, now

    await cluster.decided(meanwhile=stays)

    record = await node_record(cluster, "n1")
    resumed = (await cluster.event_list("node.resumed", "node/n1"))[-1]
    if mode == "none":
        assert set(record.failback_held) == {"eager", "lazy"}
        assert "failback none: 2 VM(s) away from it stay where they are" in resumed.reason
        waits = await cluster.event_list("controller.waiting", "vm/eager")
        assert any("was resumed with failback none" in e.reason for e in waits), waits
        assert not await cluster.event_list("vm.failback", "vm/eager")
    else:
        assert record.failback_held == {}
        assert f"failback {mode}" in resumed.reason
    if mode == "policy":
        assert await cluster.event_list("vm.failback", "vm/eager")
