"""Nodes through the API: listed with their alive flag, paused and resumed under the node
lifecycle, with events."""

from __future__ import annotations

import time

import httpx

from hvcluster.models.base import decode, encode
from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.models.node import Node
from hvcluster.models.vm import Placement
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
