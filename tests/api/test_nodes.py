"""Nodes through the API: listed with their alive flag, paused and resumed under the node
lifecycle, with events."""

from __future__ import annotations

import time

import httpx
from fastapi import FastAPI

from hvcluster.models.base import decode, encode
from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.models.node import Node
from hvcluster.models.vm import Placement, VMSpec
from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import KEYS, add_node, kinds, spec, stored_events


async def stored_node(store: MemoryStore, name: str) -> Node:
    kv = await store.get(KEYS.node(name))
    assert kv is not None
    return decode(Node, kv.key, kv.value)


async def test_list_and_show_with_alive_flag_and_vm_count(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_node(store, "n1")
    await add_node(store, "n2", alive=False)
    await api.post("/vms", json=spec("web-1"))
    await store.put(KEYS.placement("web-1"), encode(Placement(node="n1", epoch=1)))

    answer = (await api.get("/nodes")).json()
    rows = {n["name"]: (n["alive"], n["admin_state"], n["vms"]) for n in answer["nodes"]}
    assert rows == {"n1": (True, "up", 1), "n2": (False, "up", 0)}

    n1 = (await api.get("/nodes/n1")).json()
    assert n1["alive"] is True
    assert n1["heartbeat"]["node"] == "n1"
    assert n1["node"]["capacity"] == {"cpus": 4, "memory_mib": 4096}
    assert (await api.get("/nodes/n2")).json()["alive"] is False


async def test_unknown_node_is_404(api: httpx.AsyncClient) -> None:
    for method, path in (("GET", "/nodes/ghost"), ("POST", "/nodes/ghost/pause")):
        r = await api.request(method, path)
        assert r.status_code == 404
        assert r.json()["error"] == "node 'ghost' not found"


async def test_pause_and_resume(api: httpx.AsyncClient, store: MemoryStore) -> None:
    await add_node(store, "n1")
    r = await api.post("/nodes/n1/pause", json={"reason": "firmware update"})
    assert r.status_code == 202, r.text
    assert r.json()["admin_state"] == "paused"
    node = await stored_node(store, "n1")
    assert (node.admin_state, node.admin_reason) == (NodeAdminState.PAUSED, "firmware update")
    assert node.admin_since > 0

    await api.post("/nodes/n1/pause")  # already paused: no change, no event
    r = await api.post("/nodes/n1/resume")
    assert r.json()["admin_state"] == "up"
    assert (await stored_node(store, "n1")).admin_state is NodeAdminState.UP

    events = await stored_events(store)
    assert [e.kind for e in events] == ["node.paused", "node.resumed"]
    assert events[0].reason == "firmware update"
    assert (events[0].subject, events[0].data["from"], events[0].data["to"]) == (
        "node/n1",
        "up",
        "paused",
    )


async def test_quarantined_node_is_not_resumed_silently(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_node(
        store, "n1", admin=NodeAdminState.QUARANTINED, quarantined_until=time.time() + 3600
    )
    for path in ("/nodes/n1/resume", "/nodes/n1/pause"):
        r = await api.post(path)
        assert r.status_code == 409, r.text
        assert "quarantined" in r.json()["error"]
    assert (await stored_node(store, "n1")).admin_state is NodeAdminState.QUARANTINED
    assert await kinds(store) == []

    r = await api.post("/nodes/n1/resume", json={"clear_quarantine": True})
    assert r.status_code == 202, r.text
    node = await stored_node(store, "n1")
    assert (node.admin_state, node.quarantined_until) == (NodeAdminState.UP, None)
    assert node.failures_forgiven_at == node.admin_since  # its past failures count no more


async def test_unknown_body_field_is_refused(api: httpx.AsyncClient, store: MemoryStore) -> None:
    await add_node(store, "n1")
    r = await api.post("/nodes/n1/pause", json={"reasn": "typo"})
    assert r.status_code == 422
    assert r.json()["field"] == "reasn"


async def test_corrupt_node_is_skipped(api: httpx.AsyncClient, store: MemoryStore) -> None:
    await add_node(store, "n1")
    await store.put(KEYS.node("n9"), b"\x00\x01")
    answer = (await api.get("/nodes")).json()
    assert [n["name"] for n in answer["nodes"]] == ["n1"]
    assert [s["key"] for s in answer["skipped"]] == [KEYS.node("n9")]
    assert await kinds(store) == ["store.corrupt_value"]


async def test_node_use_follows_changes_and_decodes_only_them(
    api: httpx.AsyncClient, store: MemoryStore, app: FastAPI
) -> None:
    """Each call reflects the store as it is now (an edited spec, a moved VM, a deleted
    one, a corrupt one skipped and named) while decoding only what changed since the last
    (api/node_use.py)."""
    await add_node(store, "n1")
    await add_node(store, "n2")
    for name in ("a", "b", "c"):
        await api.post("/vms", json=spec(name, memory_mib=256))
        kv = await store.get(KEYS.vm(name))
        assert kv is not None
        uid = decode(VMSpec, kv.key, kv.value).uid
        await store.put(KEYS.placement(name), encode(Placement(node="n1", epoch=1, uid=uid)))

    async def use() -> dict[str, tuple[int, int]]:
        answer = (await api.get("/nodes")).json()
        return {n["name"]: (n["vms"], n["memory_placed_mib"]) for n in answer["nodes"]}

    assert await use() == {"n1": (3, 768), "n2": (0, 0)}
    kept = app.state.ctx.node_use
    decoded = kept.specs.decoded + kept.placements.decoded
    assert await use() == {"n1": (3, 768), "n2": (0, 0)}
    assert kept.specs.decoded + kept.placements.decoded == decoded, "nothing changed"

    kv = await store.get(KEYS.vm("a"))
    assert kv is not None
    bigger = decode(VMSpec, kv.key, kv.value).model_copy(update={"memory_mib": 1024})
    await store.put(KEYS.vm("a"), encode(bigger))
    kv = await store.get(KEYS.placement("b"))
    assert kv is not None
    moved = decode(Placement, kv.key, kv.value).model_copy(update={"node": "n2", "epoch": 2})
    await store.put(KEYS.placement("b"), encode(moved))
    await store.delete(KEYS.placement("c"))
    await store.put(KEYS.vm("c"), b"not json")
    assert await use() == {"n1": (1, 1024), "n2": (1, 256)}
    assert kept.specs.decoded + kept.placements.decoded == decoded + 3  # a, b, c
    answer = (await api.get("/nodes")).json()
    assert [s["key"] for s in answer["skipped"]] == [KEYS.vm("c")], "reported every call"
    assert (await api.get("/nodes/n2")).json()["memory_placed_mib"] == 256
