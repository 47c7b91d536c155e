"""Moving VMs through the API: the record stored, refusals with their reason, cancel, drain,
failback on resume."""

from __future__ import annotations

import httpx

from hvcluster.models.base import decode, encode
from hvcluster.models.lifecycle import MigrationState, NodeAdminState, VMState
from hvcluster.models.migration import Migration
from hvcluster.models.node import Node
from hvcluster.models.vm import Placement, VMStatus
from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import KEYS, add_node, kinds, spec


async def running(
    api: httpx.AsyncClient, store: MemoryStore, vm: str, node: str, **over: object
) -> None:
    await api.post("/vms", json=spec(vm, **over))
    await store.put(KEYS.placement(vm), encode(Placement(node=node, epoch=3)))
    status = VMStatus(vm=vm, node=node, epoch=3, state=VMState.RUNNING, since=1.0)
    await store.put(KEYS.status(vm), encode(status))


async def test_move_stores_a_requested_record(api: httpx.AsyncClient, store: MemoryStore) -> None:
    await add_node(store, "n1")
    await add_node(store, "n2")
    await running(api, store, "web", "n1")
    r = await api.post("/vms/web/move", json={"to": "n2"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["state"], body["source"], body["target"], body["epoch"]) == (
        "requested",
        "n1",
        "n2",
        3,
    )
    kv = await store.get(KEYS.migration(body["id"]))
    assert kv is not None and decode(Migration, kv.key, kv.value).kind == "live"
    listed = (await api.get("/migrations")).json()["migrations"]
    assert [m["id"] for m in listed] == [body["id"]]
    assert (await api.get(f"/migrations/{body['id']}")).json()["vm"] == "web"
    assert "migration.requested" in await kinds(store)
    # a second move while this one is under way is refused
    again = await api.post("/vms/web/move", json={"kind": "quick"})
    assert again.status_code == 409 and "already moving" in again.json()["error"]


async def test_refusals_name_the_reason(api: httpx.AsyncClient, store: MemoryStore) -> None:
    await add_node(store, "n1")
    await add_node(store, "dead", alive=False)
    await add_node(store, "paused", admin=NodeAdminState.PAUSED)
    await add_node(store, "small")
    await running(api, store, "web", "n1")
    await running(api, store, "big", "small", memory_mib=4000)
    await api.post("/vms", json=spec("off", desired_state="stopped"))
    cases = {
        ("web", "dead"): "dead is not alive",
        ("web", "paused"): "paused is paused",
        ("web", "small"): "small has 96 of 4096 MiB free",
        ("web", "n1"): "already runs on n1",
        ("web", "ghost"): "node 'ghost' not found",
        ("off", "n1"): "not running",
    }
    for (vm, to), why in cases.items():
        r = await api.post(f"/vms/{vm}/move", json={"to": to})
        assert r.status_code == 409, (vm, to, r.text)
        assert why in r.json()["error"], r.json()["error"]
    r = await api.post("/vms/web/move", json={})
    assert r.status_code == 409 and "no node can take web" in r.json()["error"]
    assert (await api.post("/vms/nope/move", json={})).status_code == 404


async def test_a_move_is_refused_by_hard_anti_affinity_with_the_vm_there(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    """The API asks the one fitting rule (models/fit.py) with the VMs on the target: the
    controller would refuse the move for the same reason."""
    await add_node(store, "n1")
    await add_node(store, "n2")
    dc = {"anti_affinity_classes": ["dc"], "anti_affinity_enforced": True}
    await running(api, store, "dc1", "n1", ha=dc)
    await running(api, store, "dc2", "n2", ha=dc)
    r = await api.post("/vms/dc1/move", json={"to": "n2"})
    assert r.status_code == 409
    assert r.json()["error"] == (
        "cannot move dc1 to n2: n2 runs dc2 of hard anti-affinity class 'dc'"
    )


async def test_cancel(api: httpx.AsyncClient, store: MemoryStore) -> None:
    await add_node(store, "n1")
    await add_node(store, "n2")
    await running(api, store, "web", "n1")
    mid = (await api.post("/vms/web/move", json={})).json()["id"]
    r = await api.post(f"/migrations/{mid}/cancel", json={"reason": "changed my mind"})
    assert r.status_code == 202 and r.json()["state"] == "cancelled"
    assert r.json()["reason"] == "changed my mind"
    again = await api.post(f"/migrations/{mid}/cancel")
    assert again.status_code == 202  # idempotent
    assert (await api.get("/migrations/nope")).status_code == 404


async def test_drain_sets_draining_and_immediate_failback_moves_back(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_node(store, "n1")
    await add_node(store, "n2")
    r = await api.post("/nodes/n1/drain")
    assert r.status_code == 202 and r.json()["admin_state"] == "draining"
    kv = await store.get(KEYS.node("n1"))
    assert kv is not None and decode(Node, kv.key, kv.value).admin_state is NodeAdminState.DRAINING
    # as if the drain moved web to n2 (epoch 3 -> 4) and the controller paused n1
    await running(api, store, "web", "n2")
    drained = Migration(
        id="web-1",
        vm="web",
        source="n1",
        target="n2",
        epoch=2,
        state=MigrationState.DONE,
        requested_by="drain:n1",
        created=1.0,
    )
    await store.put(KEYS.migration("web-1"), encode(drained))
    await api.post("/nodes/n1/pause")
    r = await api.post("/nodes/n1/resume", json={"failback": "immediate"})
    assert r.status_code == 202, r.text
    back = [m for m in (await api.get("/migrations")).json()["migrations"] if m["id"] != "web-1"]
    assert [(m["vm"], m["source"], m["target"], m["requested_by"]) for m in back] == [
        ("web", "n2", "n1", "resume:n1")
    ]


async def test_a_target_lacking_the_vms_switch_or_volume_is_refused(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_node(store, "n1")
    await add_node(store, "n2")
    nics = [{"switch": "lan", "mac": "52:54:00:00:00:01"}]
    disks = [{"volume": "csv1", "path": "web.qcow2"}]
    await running(api, store, "web", "n1", nics=nics, disks=disks)
    r = await api.post("/vms/web/move", json={"to": "n2"})
    assert r.status_code == 409
    assert "n2 lacks switch 'lan' and volume 'csv1'" in r.json()["error"]


async def with_volumes(store: MemoryStore, name: str, *volumes: str) -> None:
    await add_node(store, name)
    kv = await store.get(KEYS.node(name))
    assert kv is not None
    node = decode(Node, kv.key, kv.value).model_copy(update={"volumes": volumes})
    await store.put(KEYS.node(name), encode(node))


async def test_quick_move_needs_a_volume_both_nodes_see(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    """The state is saved where the target can read it, or the move is refused up front."""
    await with_volumes(store, "n1", "a")
    await with_volumes(store, "n2", "b")
    await with_volumes(store, "n3", "b", "a")
    await running(api, store, "web", "n1")
    r = await api.post("/vms/web/move", json={"to": "n2", "kind": "quick"})
    assert r.status_code == 409, r.text
    assert r.json()["error"] == (
        "cannot move web to n2: n1 and n2 share no volume to save the VM's state on: "
        "no quick migration between them"
    )
    assert (await api.get("/migrations")).json()["migrations"] == []
    # live needs no shared volume for the state; quick to n3 (sees a) is stored
    r = await api.post("/vms/web/move", json={"to": "n3", "kind": "quick"})
    assert r.status_code == 202, r.text


async def test_quick_move_with_no_target_named_says_why_none_fits(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await with_volumes(store, "n1", "a")
    await with_volumes(store, "n2")
    await running(api, store, "web", "n1")
    r = await api.post("/vms/web/move", json={"kind": "quick"})
    assert r.status_code == 409
    assert r.json()["error"] == (
        "no node can take web: n1 and n2 share no volume to save the VM's state on: "
        "no quick migration between them"
    )
    assert (await api.post("/vms/web/move", json={"kind": "live"})).status_code == 202
