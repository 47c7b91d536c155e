"""A migration's own bandwidth cap through the API: stored in the record, said in the
request's event; bad values refused with a 422 naming the field."""

from __future__ import annotations

import httpx
import pytest

from hvcluster.models.base import decode
from hvcluster.models.migration import Migration
from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import KEYS, add_node, stored_events
from tests.api.test_migrations import running


async def test_the_cap_is_stored_in_the_record_and_said(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_node(store, "n1")
    await add_node(store, "n2")
    await running(api, store, "web", "n1")
    r = await api.post("/vms/web/move", json={"to": "n2", "max_bandwidth_mib_s": 100})
    assert r.status_code == 202, r.text
    assert r.json()["max_bandwidth_mib_s"] == 100
    kv = await store.get(KEYS.migration(r.json()["id"]))
    assert kv is not None and decode(Migration, kv.key, kv.value).max_bandwidth_mib_s == 100
    [said] = [e for e in await stored_events(store) if e.kind == "migration.requested"]
    assert "capped at 100 MiB/s" in said.reason


@pytest.mark.parametrize("cap", [0, -5, 10**7, "fast", 1.5])
async def test_a_bad_cap_is_refused_naming_the_field(
    api: httpx.AsyncClient, store: MemoryStore, cap: object
) -> None:
    await add_node(store, "n1")
    await add_node(store, "n2")
    await running(api, store, "web", "n1")
    r = await api.post("/vms/web/move", json={"to": "n2", "max_bandwidth_mib_s": cap})
    assert r.status_code == 422, r.text
    assert "max_bandwidth_mib_s" in r.text


async def test_a_quick_move_takes_no_cap(api: httpx.AsyncClient, store: MemoryStore) -> None:
    await add_node(store, "n1")
    await add_node(store, "n2")
    await running(api, store, "web", "n1")
    body = {"to": "n2", "kind": "quick", "max_bandwidth_mib_s": 50}
    r = await api.post("/vms/web/move", json=body)
    assert r.status_code == 422 and r.json()["field"] == "max_bandwidth_mib_s", r.text
    assert "live migration" in r.json()["error"]
    assert (await api.get("/migrations")).json()["migrations"] == []
