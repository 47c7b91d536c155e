"""Balancing in an in-process cluster (real agents publishing CPU use, the real controller,
sim VMs whose CPU use the test sets): a periodic run live-moves a VM off a hot node; the
API's dry run shows the controller's plan, and an apply carries it out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from hvcluster.models.base import decode
from hvcluster.models.config import BalanceSettings
from hvcluster.models.usage import NodeUsage
from tests.sim.cluster import FAST, SimCluster, with_api

pytestmark = pytest.mark.timeout(120)

VMS = [f"vm-{i}" for i in range(4)]


async def _hot_n1(cluster: SimCluster) -> None:
    """n1 and n2 up; four 1-vCPU VMs on n1 (their preferred owner), each using a whole
    core: n1 at 100 % CPU, n2 idle."""
    await cluster.start("n1", "n2")
    for driver in cluster.drivers.values():
        driver.cpu_set.update({vm: 100.0 for vm in VMS})
    for vm in VMS:
        await cluster.create_vm(vm, vcpus=1, ha={"preferred_owners": ["n1"]})
    for vm in VMS:
        assert await cluster.wait_running(vm) == "n1"

    async def published() -> bool:
        kv = await cluster.store.get(cluster.keys.usage("n1"))
        if kv is None:
            return False
        usage = decode(NodeUsage, kv.key, kv.value)
        return usage.host_cores is not None and usage.host_cores > 3.5 and len(usage.vms) == 4

    await cluster.wait_for(published, 120, "n1's CPU use published")


async def _ask(cluster: SimCluster, api: httpx.AsyncClient, apply: bool) -> httpx.Response:
    """POST /cluster/balance while the cluster's manual clock moves (the controller that
    answers runs on it)."""
    task = asyncio.create_task(api.post("/cluster/balance", json={"apply": apply}))
    await cluster.wait_for(task.done, 30, "the API's answer")
    return task.result()


async def _where(cluster: SimCluster) -> dict[str, str | None]:
    return {vm: await cluster.running_on(vm) for vm in VMS}


async def test_a_periodic_balance_live_moves_a_vm_off_the_hot_node(tmp_path: Path) -> None:
    config = FAST.model_copy(update={"balance": BalanceSettings(interval_s=120.0)})
    cluster = SimCluster(tmp_path, config)
    try:
        await _hot_n1(cluster)

        async def moved() -> bool:
            return list((await _where(cluster)).values()).count("n2") == 1

        await cluster.wait_for(moved, 300, "one VM moved to n2")
        moves = await cluster.event_list("balance.move")
        assert len(moves) == 1
        assert "n1 is at 100 %, above it" in moves[0].reason
        assert "to n2" in moves[0].reason
        starts = await cluster.event_list("balance.start")
        assert any("periodic" in e.reason for e in starts)
        await cluster.wait_for(
            lambda: cluster.event_list("balance.done"), 60, "the balance run to end"
        )
        assert list((await _where(cluster)).values()).count("n1") == 3  # 75 %: within 80 %
    finally:
        await cluster.stop()


async def test_the_api_shows_the_controller_s_plan_and_applies_it(tmp_path: Path) -> None:
    config = FAST.model_copy(update={"balance": BalanceSettings(enabled=False)})
    cluster = SimCluster(tmp_path, config)
    async with with_api(cluster) as api:
        await _hot_n1(cluster)
        dry = await _ask(cluster, api, apply=False)
        assert dry.status_code == 200, dry.text
        plan = dry.json()
        assert [(m["source"], m["target"]) for m in plan["moves"]] == [("n1", "n2")]
        assert plan["started"] is False and plan["over"] == ["n1"]
        assert list((await _where(cluster)).values()).count("n1") == 4  # a dry run moves nothing
        done = await _ask(cluster, api, apply=True)
        assert done.status_code == 200 and done.json()["started"] is True

        async def moved() -> bool:
            return list((await _where(cluster)).values()).count("n2") == 1

        await cluster.wait_for(moved, 60, "one VM moved to n2")
        assert await cluster.event_list("balance.requested")
