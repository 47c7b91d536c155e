"""``/cluster/config``: read, change by dotted keys, refusals naming the field and why,
compare-and-set on the revision, an event per change, admin only."""

from __future__ import annotations

import httpx
import pytest

from hvcluster.models.config import ClusterConfig
from hvcluster.models.token import Role
from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import KEYS, stored_events
from tests.tokens import api_client


async def test_defaults_then_round_trip(api: httpx.AsyncClient, store: MemoryStore) -> None:
    shown = (await api.get("/cluster/config")).json()
    assert (shown["stored"], shown["revision"], shown["profile"]) == (False, 0, "default")
    assert shown["config"]["fence_after_s"] == 3.0
    assert "fence_after_s" in shown["restart_needed"]

    r = await api.patch(
        "/cluster/config",
        json={
            "settings": {"migration.downtime_limit_ms": 500, "quarantine.threshold": 5},
            "reason": "longer pauses are fine here",
        },
    )
    assert r.status_code == 200, r.text
    changed = r.json()
    assert changed["stored"] and changed["revision"] > 0
    assert {(c["key"], c["before"], c["after"]) for c in changed["changes"]} == {
        ("migration.downtime_limit_ms", 300, 500),
        ("quarantine.threshold", 3, 5),
    }
    again = (await api.get("/cluster/config")).json()
    assert again["config"]["migration"]["downtime_limit_ms"] == 500
    assert again["config"]["quarantine"]["threshold"] == 5
    assert again["revision"] == changed["revision"]
    kv = await store.get(KEYS.config)
    assert kv is not None
    assert ClusterConfig.model_validate_json(kv.value).migration.downtime_limit_ms == 500

    event = [e for e in await stored_events(store) if e.kind == "cluster.config_changed"][-1]
    assert event.actor.startswith("token:test-admin@")  # who
    assert "migration.downtime_limit_ms 300 -> 500" in event.reason  # what, from, to
    assert "longer pauses are fine here" in event.reason
    assert event.data["migration.downtime_limit_ms.before"] == 300
    assert event.data["migration.downtime_limit_ms.after"] == 500


async def test_timings_say_they_need_a_restart(api: httpx.AsyncClient, store: MemoryStore) -> None:
    r = await api.patch(
        "/cluster/config", json={"settings": {"lease_ttl_s": 6, "fence_after_s": 4.5}}
    )
    assert r.status_code == 200, r.text
    needs = {c["key"]: c["restart_needed"] for c in r.json()["changes"]}
    assert needs == {"lease_ttl_s": True, "fence_after_s": True}
    event = [e for e in await stored_events(store) if e.kind == "cluster.config_changed"][-1]
    assert "once it restarts" in event.reason


@pytest.mark.parametrize(
    ("settings", "field", "words"),
    [
        ({"lease_ttl_s": 3}, "lease_ttl_s", "fence itself before its lease can expire"),
        ({"fence_after_s": 5}, "fence_after_s", "must be below lease_ttl_s"),
        ({"keepalive_interval_s": 2}, "keepalive_interval_s", "at most half of fence_after_s"),
        ({"evidence_interval_s": 3, "recovery_margin_s": 4}, "evidence_interval_s", "etcd"),
        ({"expired_margin_s": 0}, "expired_margin_s", "above 0"),
        ({"migration.downtime_limit_ms": -1}, "migration.downtime_limit_ms", "greater than 0"),
        ({"migration.drain_fallback": "fly"}, "migration.drain_fallback", "quick"),
        ({"no_such": 1}, "no_such", "settable"),
        ({"name": "other"}, "name", "settable"),
        ({"migration": 1}, "migration", "settable"),
        ({"allowed_disk_dirs": ["/etc"]}, "allowed_disk_dirs", "not a disk directory"),
    ],
)
async def test_refusals_name_the_field_and_why(
    api: httpx.AsyncClient, store: MemoryStore, settings: dict[str, object], field: str, words: str
) -> None:
    r = await api.patch("/cluster/config", json={"settings": settings})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == field and words in body["error"], body
    assert await store.get(KEYS.config) is None  # nothing stored


async def test_stale_revision_is_a_conflict(api: httpx.AsyncClient) -> None:
    seen = (await api.get("/cluster/config")).json()["revision"]
    first = await api.patch(
        "/cluster/config", json={"settings": {"quarantine.threshold": 4}, "revision": seen}
    )
    assert first.status_code == 200, first.text
    now = first.json()["revision"]
    # a second admin decided on what they saw before the first change
    second = await api.patch(
        "/cluster/config", json={"settings": {"quarantine.threshold": 9}, "revision": seen}
    )
    assert second.status_code == 409
    assert f"changed since revision {seen}" in second.json()["error"]
    assert f"revision {now} now" in second.json()["error"]
    assert (await api.get("/cluster/config")).json()["config"]["quarantine"]["threshold"] == 4


async def test_nothing_to_change_writes_nothing(api: httpx.AsyncClient, store: MemoryStore) -> None:
    r = await api.patch("/cluster/config", json={"settings": {"fence_after_s": 3.0}})
    assert r.status_code == 200 and r.json()["changes"] == []
    assert await store.get(KEYS.config) is None


async def test_a_corrupt_config_can_be_replaced(api: httpx.AsyncClient, store: MemoryStore) -> None:
    await store.put(KEYS.config, b'{"lease_ttl_s": "soon"}')
    r = await api.patch("/cluster/config", json={"settings": {"quarantine.threshold": 4}})
    assert r.status_code == 200, r.text
    kv = await store.get(KEYS.config)
    assert kv is not None and ClusterConfig.model_validate_json(kv.value).quarantine.threshold == 4


@pytest.mark.parametrize("role", [Role.READER, Role.OPERATOR])
async def test_only_admins_change_it(store: MemoryStore, role: Role) -> None:
    async with api_client(store, KEYS, role=role) as client:
        assert (await client.get("/cluster/config")).status_code == 200
        r = await client.patch("/cluster/config", json={"settings": {"quarantine.threshold": 4}})
        assert r.status_code == 403 and "admin" in r.json()["error"]
    assert await store.get(KEYS.config) is None
