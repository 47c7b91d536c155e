"""The event log through the API: the latest N, and a live follow from a revision."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from fastapi import FastAPI

from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import KEYS, add_node, kinds, spec
from tests.waiting import wait_for


def sse(body: str) -> list[tuple[str, dict[str, Any], str | None]]:
    """(event, data, id) of each message of a text/event-stream body."""
    out = []
    for block in body.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "data" in fields:
            out.append(
                (fields.get("event", "message"), json.loads(fields["data"]), fields.get("id"))
            )
    return out


async def test_list_latest_in_order(api: httpx.AsyncClient) -> None:
    for name in ("a", "b", "c"):
        await api.post("/vms", json=spec(name))
    answer = (await api.get("/events", params={"limit": 2})).json()
    subjects = [e["event"]["subject"] for e in answer["events"]]
    assert subjects == ["vm/b", "vm/c"]
    seqs = [e["seq"] for e in answer["events"]]
    assert seqs == sorted(seqs)
    assert answer["revision"] >= answer["events"][-1]["revision"]
    assert (await api.get("/events", params={"limit": 0})).status_code == 422


async def test_follow_streams_new_events(api: httpx.AsyncClient, store: MemoryStore) -> None:
    await api.post("/vms", json=spec("before"))
    since = (await api.get("/events")).json()["revision"] + 1

    follow = asyncio.create_task(api.get("/events/follow", params={"since": since, "count": 2}))
    await wait_for(lambda: store.caught_up_watches == 1, 5, "the follow's watch caught up")
    assert not follow.done()  # it has seen all there is: waiting for what comes next
    await api.post("/vms", json=spec("web-1"))
    await api.post("/vms/web-1/stop")
    r = await asyncio.wait_for(follow, 10)

    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    messages = sse(r.text)
    assert [(m[0], m[1]["event"]["kind"]) for m in messages] == [
        ("event", "vm.created"),
        ("event", "vm.stop_requested"),
    ]
    assert messages[0][1]["event"]["subject"] == "vm/web-1"
    assert messages[0][2] == str(messages[0][1]["revision"])


async def test_follow_resumes_after_last_event_id(api: httpx.AsyncClient) -> None:
    await api.post("/vms", json=spec("a"))
    await api.post("/vms", json=spec("b"))
    first = (await api.get("/events")).json()["events"][0]
    r = await api.get(
        "/events/follow",
        params={"count": 1},
        headers={"Last-Event-ID": str(first["revision"])},
    )
    [(kind, data, _)] = sse(r.text)
    assert (kind, data["event"]["subject"]) == ("event", "vm/b")


async def test_follow_from_a_compacted_revision_says_so(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    for name in ("a", "b", "c"):
        await api.post("/vms", json=spec(name))
    await store.compact(await store.revision())
    r = await api.get("/events/follow", params={"since": 2})
    [(kind, data, _)] = sse(r.text)
    assert kind == "error"
    assert "compacted" in data["error"]


async def test_cluster_and_health(api: httpx.AsyncClient, store: MemoryStore) -> None:
    await add_node(store, "n1")
    await add_node(store, "n2", alive=False)
    await api.post("/vms", json=spec("a"))
    await api.post("/vms", json=spec("b", desired_state="stopped"))
    c = (await api.get("/cluster")).json()
    assert (c["cluster"], c["served_by"], c["config_stored"]) == ("t", "n1", False)
    assert c["config"]["lease_ttl_s"] == 4.0
    assert c["counts"] == {
        "nodes": 2,
        "nodes_alive": 1,
        "nodes_up": 2,
        "vms": 2,
        "vms_desired_running": 1,
        "vms_placed": 0,
        "vms_by_state": {"pending": 1, "stopped": 1},
    }
    await store.put(KEYS.config, b"nonsense")
    c = (await api.get("/cluster")).json()
    assert c["config_stored"] is False
    assert [s["key"] for s in c["skipped"]] == [KEYS.config]

    h = await api.get("/healthz")
    assert h.status_code == 200
    assert h.json()["ok"] is True


async def test_store_outage_is_503(api: httpx.AsyncClient, store: MemoryStore) -> None:
    store.set_available(False)
    try:
        for path in ("/healthz", "/vms", "/nodes", "/events"):
            r = await api.get(path)
            assert r.status_code == 503, path
            assert "unavailable" in r.json()["error"]
        r = await api.post("/vms", json=spec("a"))
        assert r.status_code == 503
    finally:
        store.set_available(True)
    assert (await store.range(KEYS.prefix("vms"))).kvs == ()


async def test_corrupt_event_is_skipped_and_reported(
    api: httpx.AsyncClient, store: MemoryStore, app: FastAPI
) -> None:
    await api.post("/vms", json=spec("a"))
    await api.post("/vms", json=spec("b"))
    await store.put(KEYS.event(1), b"\x80garbage")
    answer = (await api.get("/events")).json()
    assert [e["event"]["subject"] for e in answer["events"]] == ["vm/b"]
    assert [s["key"] for s in answer["skipped"]] == [KEYS.event(1)]

    async def reported() -> bool:  # in the background, once
        return "store.corrupt_value" in await kinds(store)

    await wait_for(reported, 1, "the corrupt value reported")
    await api.get("/events")
    await asyncio.sleep(0.05)
    assert (await kinds(store)).count("store.corrupt_value") == 1
