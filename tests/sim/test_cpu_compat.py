"""The guest CPU model follows the VM (in-process cluster, real agents and controller, sim
VMs whose incoming side refuses the CPU state of another model, as QEMU would fail to load
it). Three nodes with different default models: n1 gives guests sim-cpu; n2 sim-cpu-v2 and
can provide sim-cpu too; n3 provides only sim-cpu-v3.

A VM booted on n1 moves live (or quick) to n2 and keeps sim-cpu there; a move to n3 is
refused by the API up front (409 with the reason) and by the controller when the record
gets there anyway; a cold start on n3 takes n3's own model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hvcluster.models.base import decode
from hvcluster.models.lifecycle import MigrationState, NodeAdminState, VMState
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.models.node import Node
from hvcluster.store.migrations import create_migration, read_migrations
from tests.sim.cluster import FAST, SimCluster, with_api

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[SimCluster, httpx.AsyncClient]]:
    cluster = SimCluster(tmp_path, FAST)
    cluster.cpu_models.update({"n2": "sim-cpu-v2", "n3": "sim-cpu-v3"})
    cluster.cpu_provides["n2"] = ("sim-cpu-v2", "sim-cpu")
    async with with_api(cluster) as api:
        yield cluster, api


async def finished(cluster: SimCluster, mid: str) -> Migration:
    async def done() -> Migration | None:
        kv = await cluster.store.get(cluster.keys.migration(mid))
        assert kv is not None
        rec = decode(Migration, kv.key, kv.value)
        return None if rec.active else rec

    rec: Migration = await cluster.wait_for(done, 20, f"migration {mid} to end")
    return rec


async def model_of(cluster: SimCluster, vm: str, node: str) -> tuple[str, str] | None:
    """The CPU model of ``vm`` as its status says and as ``node``'s driver runs it, once
    that status says it runs there."""
    status = await cluster.status(vm)
    if status is None or status.node != node or status.state is not VMState.RUNNING:
        return None
    info = await cluster.drivers[node].status(vm)
    return status.cpu_model, info.cpu_model


async def wait_model(cluster: SimCluster, vm: str, node: str) -> tuple[str, str] | None:
    async def reported() -> tuple[str, str] | None:
        return await model_of(cluster, vm, node)

    found: tuple[str, str] | None = await cluster.wait_for(reported, 10, f"{vm} on {node}")
    return found


async def test_the_model_follows_a_live_and_a_quick_move(
    setup: tuple[SimCluster, httpx.AsyncClient],
) -> None:
    cluster, api = setup
    await cluster.add_volume("csv")  # a quick move saves the state there
    await cluster.start("n1", "n2", "n3")
    kv = await cluster.store.get(cluster.keys.node("n2"))
    assert kv is not None
    inv = decode(Node, kv.key, kv.value).inventory
    assert (inv.guest_cpu_model, inv.guest_cpu_models) == ("sim-cpu-v2", ("sim-cpu-v2", "sim-cpu"))
    await cluster.create_vm("web", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("web") == "n1"
    assert await wait_model(cluster, "web", "n1") == ("sim-cpu", "sim-cpu")

    r = await api.post("/vms/web/move", json={"to": "n2", "kind": "live"})
    assert r.status_code == 202, r.text
    rec = await finished(cluster, r.json()["id"])
    assert (rec.state, rec.cpu_model) == (MigrationState.DONE, "sim-cpu"), rec.reason
    assert await cluster.wait_running("web", 10, not_on="n1") == "n2"

    assert await wait_model(cluster, "web", "n2") == ("sim-cpu", "sim-cpu")  # not sim-cpu-v2

    # n3 cannot provide sim-cpu: refused up front, live and quick alike, with the reason
    for kind in ("live", "quick"):
        r = await api.post("/vms/web/move", json={"to": "n3", "kind": kind})
        assert r.status_code == 409, r.text
        assert "cannot move web to n3: live and quick migration impossible from n2 to n3 " in (
            r.text
        )
        assert "model sim-cpu not available on n3" in r.text and "cold move only" in r.text
    # ... and by the controller, should a record get there (a node can change meanwhile)
    status = await cluster.status("web")
    assert status is not None
    made = await create_migration(
        cluster.store, cluster.keys, "web", "n2", "n3", status.epoch, MigrationKind.QUICK, "test"
    )
    assert made is not None
    rec = await finished(cluster, made.id)
    assert rec.state is MigrationState.FAILED
    assert "model sim-cpu not available on n3" in rec.reason
    assert await cluster.running_on("web") == "n2"

    # a quick move keeps the model too: back to n1
    r = await api.post("/vms/web/move", json={"to": "n1", "kind": "quick"})
    assert r.status_code == 202, r.text
    rec = await finished(cluster, r.json()["id"])
    assert (rec.state, rec.cpu_model) == (MigrationState.DONE, "sim-cpu"), rec.reason
    assert await cluster.wait_running("web", 10, not_on="n2") == "n1"
    assert await wait_model(cluster, "web", "n1") == ("sim-cpu", "sim-cpu")


async def test_a_vm_born_on_n2_cannot_go_to_n1_but_a_cold_start_takes_the_nodes_model(
    setup: tuple[SimCluster, httpx.AsyncClient],
) -> None:
    cluster, api = setup
    await cluster.start("n1", "n2")
    await cluster.create_vm("db", ha={"preferred_owners": ["n2"]})
    assert await cluster.wait_running("db") == "n2"
    assert await wait_model(cluster, "db", "n2") == ("sim-cpu-v2", "sim-cpu-v2")
    r = await api.post("/vms/db/move", json={"kind": "live"})  # no target: none fits
    assert r.status_code == 409, r.text
    assert "no node can take db" in r.text and "model sim-cpu-v2 not available on n1" in r.text

    await cluster.crash("n2")  # failover: a cold start on n1, with n1's model
    assert await cluster.wait_running("db", 30, not_on="n2") == "n1"

    assert await wait_model(cluster, "db", "n1") == ("sim-cpu", "sim-cpu")


async def test_a_spec_that_names_a_model_starts_only_where_it_is_provided(
    setup: tuple[SimCluster, httpx.AsyncClient],
) -> None:
    cluster, _ = setup
    await cluster.start("n1", "n2", "n3")
    await cluster.create_vm("app", cpu_model="sim-cpu-v3", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("app") == "n3"
    assert await wait_model(cluster, "app", "n3") == ("sim-cpu-v3", "sim-cpu-v3")


async def test_drain_moves_a_vm_only_where_its_model_is_provided(
    setup: tuple[SimCluster, httpx.AsyncClient],
) -> None:
    cluster, api = setup
    await cluster.start("n1", "n2", "n3")
    await cluster.create_vm("a", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("a") == "n1"
    assert (await api.post("/nodes/n1/drain")).status_code == 202

    async def drained() -> bool:
        kv = await cluster.store.get(cluster.keys.node("n1"))
        assert kv is not None
        return decode(Node, kv.key, kv.value).admin_state is NodeAdminState.PAUSED

    await cluster.wait_for(drained, 30, "n1 drained")
    assert await cluster.running_on("a") == "n2"  # n3 would take it, but not its sim-cpu
    assert await wait_model(cluster, "a", "n2") == ("sim-cpu", "sim-cpu")
    (move,) = await cluster.event_list("drain.move", "vm/a")
    assert "by live migration" in move.reason

    # drain n2 now: only n1 (paused) and n3 (no sim-cpu) are left: a stays, saying why
    assert (await api.post("/nodes/n2/drain")).status_code == 202

    async def stayed() -> str | None:
        found = await cluster.event_list("drain.stay", "vm/a")
        return found[-1].reason if found else None

    why = await cluster.wait_for(stayed, 20, "a to stay on n2")
    assert "model sim-cpu not available on n3" in why
    assert await cluster.running_on("a") == "n2"


async def test_failback_to_a_node_lacking_the_model_is_a_cold_move(
    setup: tuple[SimCluster, httpx.AsyncClient],
) -> None:
    cluster, _ = setup
    await cluster.start("n1", "n2")
    # it fails over to n2 (a cold start: it gets sim-cpu-v2 there), which its preferred
    # owner n1 cannot provide: the failback must be cold too
    await cluster.create_vm(
        "home",
        ha={"preferred_owners": ["n1"], "failback": {"mode": "immediate"}},
    )
    assert await cluster.wait_running("home") == "n1"
    await cluster.crash("n1")
    assert await cluster.wait_running("home", 20, not_on="n1") == "n2"
    assert await wait_model(cluster, "home", "n2") == ("sim-cpu-v2", "sim-cpu-v2")
    await cluster.start_node("n1")
    assert await cluster.wait_running("home", 30, not_on="n2") == "n1"
    assert await wait_model(cluster, "home", "n1") == ("sim-cpu", "sim-cpu")  # cold: n1's
    records = [s.value for s in (await read_migrations(cluster.store, cluster.keys)).items.values()]
    assert [r for r in records if r.vm == "home"] == []  # no live migration was tried
    placed = await cluster.placement("home")
    assert placed is not None and "stopped there" in placed.reason
