"""Nodes whose guests see different CPU models (in-process cluster, real agents and
controller, sim VMs): a live migration between them is refused with that reason, a quick
one goes; a drain that can only reach such a node moves the VM by quick migration."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hvcluster.api import create_app
from hvcluster.models.base import decode
from hvcluster.models.lifecycle import MigrationState, NodeAdminState
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.models.node import Node
from hvcluster.store.migrations import read_migrations
from tests.sim.cluster import FAST, SimCluster

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[SimCluster, httpx.AsyncClient]]:
    cluster = SimCluster(tmp_path, FAST)
    cluster.cpu_models["n2"] = "sim-cpu-v2"
    try:
        app = create_app(cluster.store, cluster.keys, "n1")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api/api/v1") as api:
            yield cluster, api
    finally:
        await cluster.stop()


async def finished(cluster: SimCluster, mid: str) -> Migration:
    async def done() -> Migration | None:
        kv = await cluster.store.get(cluster.keys.migration(mid))
        assert kv is not None
        rec = decode(Migration, kv.key, kv.value)
        return None if rec.active else rec

    rec: Migration = await cluster.wait_for(done, 20, f"migration {mid} to end")
    return rec


async def test_live_refused_quick_allowed(setup: tuple[SimCluster, httpx.AsyncClient]) -> None:
    cluster, api = setup
    await cluster.start("n1", "n2")
    kv = await cluster.store.get(cluster.keys.node("n2"))
    assert kv is not None
    assert decode(Node, kv.key, kv.value).inventory.guest_cpu_model == "sim-cpu-v2"
    await cluster.create_vm("web", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("web") == "n1"

    r = await api.post("/vms/web/move", json={"to": "n2", "kind": "live"})
    assert r.status_code == 202, r.text
    rec = await finished(cluster, r.json()["id"])
    assert rec.state is MigrationState.FAILED
    assert "guests see CPU sim-cpu on n1 and sim-cpu-v2 on n2" in rec.reason
    assert "live migration impossible (use quick migration)" in rec.reason
    assert await cluster.running_on("web") == "n1"

    r = await api.post("/vms/web/move", json={"to": "n2", "kind": "quick"})
    assert r.status_code == 202, r.text
    assert (await finished(cluster, r.json()["id"])).state is MigrationState.DONE
    assert await cluster.wait_running("web", 10, not_on="n1") == "n2"


async def test_drain_to_another_cpu_model_goes_quick(
    setup: tuple[SimCluster, httpx.AsyncClient],
) -> None:
    cluster, api = setup
    await cluster.start("n1", "n2")
    await cluster.create_vm("db", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("db") == "n1"
    assert (await api.post("/nodes/n1/drain")).status_code == 202

    async def paused() -> bool:
        kv = await cluster.store.get(cluster.keys.node("n1"))
        assert kv is not None
        return decode(Node, kv.key, kv.value).admin_state is NodeAdminState.PAUSED

    await cluster.wait_for(paused, 30, "n1 drained")
    assert await cluster.wait_running("db", 10, not_on="n1") == "n2"
    records = [s.value for s in (await read_migrations(cluster.store, cluster.keys)).items.values()]
    assert [(m.kind, m.state) for m in records] == [(MigrationKind.QUICK, MigrationState.DONE)]
    (move,) = await cluster.event_list("drain.move", "vm/db")
    assert "by quick migration (guests see CPU sim-cpu on n1 and sim-cpu-v2 on n2" in move.reason
