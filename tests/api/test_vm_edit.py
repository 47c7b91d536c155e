"""``PATCH /vms/{name}``: edits by dotted key, validated as a spec, compare-and-set on the
spec's revision (409 naming the revision now), what needs a restart said, an event each."""

from __future__ import annotations

import httpx
import pytest

from hvcluster.models.base import encode
from hvcluster.models.lifecycle import VMState
from hvcluster.models.token import Role
from hvcluster.models.vm import Placement, VMStatus
from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import KEYS, spec, stored_events
from tests.tokens import api_client


async def _create(api: httpx.AsyncClient, name: str = "web-1") -> dict[str, object]:
    r = await api.post("/vms", json=spec(name, ha={"preferred_owners": ["n1"]}))
    assert r.status_code == 201, r.text
    shown = (await api.get(f"/vms/{name}")).json()
    assert shown["spec_revision"] > 0
    return dict(shown)


async def test_edit_round_trip(api: httpx.AsyncClient, store: MemoryStore) -> None:
    shown = await _create(api)
    r = await api.patch(
        "/vms/web-1",
        json={
            "settings": {"memory_mib": 256, "ha.priority": "high", "ha.failback.mode": "immediate"},
            "revision": shown["spec_revision"],
            "reason": "more room",
        },
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert {(c["key"], c["before"], c["after"]) for c in answer["changes"]} == {
        ("memory_mib", 128, 256),
        ("ha.priority", "medium", "high"),
        ("ha.failback.mode", "never", "immediate"),
    }
    assert answer["restart_needed"] == []  # not running: nothing waits for a restart
    assert answer["spec_revision"] > shown["spec_revision"]
    again = (await api.get("/vms/web-1")).json()
    assert again["spec"]["memory_mib"] == 256 and again["spec"]["ha"]["priority"] == "high"
    assert again["spec"]["uid"] == shown["spec"]["uid"]  # the same VM  # type: ignore[index]
    event = [e for e in await stored_events(store) if e.kind == "vm.changed"][-1]
    assert "memory_mib 128 -> 256" in event.reason and "more room" in event.reason
    assert event.actor.startswith("token:test-admin@")


async def test_stale_revision_is_409_with_the_revision_now(api: httpx.AsyncClient) -> None:
    seen = (await _create(api))["spec_revision"]
    first = await api.patch("/vms/web-1", json={"settings": {"vcpus": 2}, "revision": seen})
    assert first.status_code == 200, first.text
    now = first.json()["spec_revision"]
    second = await api.patch("/vms/web-1", json={"settings": {"vcpus": 4}, "revision": seen})
    assert second.status_code == 409
    error = second.json()["error"]
    assert f"changed since revision {seen}" in error and f"revision {now} now" in error
    assert (await api.get("/vms/web-1")).json()["spec"]["vcpus"] == 2


async def test_a_running_vm_is_told_what_waits_for_a_restart(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    uid = (await _create(api))["spec"]["uid"]  # type: ignore[index]
    await store.put(KEYS.placement("web-1"), encode(Placement(node="n1", epoch=1, uid=uid)))
    status = VMStatus(vm="web-1", node="n1", epoch=1, state=VMState.RUNNING, uid=uid)
    await store.put(KEYS.status("web-1"), encode(status))
    r = await api.patch("/vms/web-1", json={"settings": {"memory_mib": 512, "ha.priority": "low"}})
    assert r.status_code == 200, r.text
    assert r.json()["restart_needed"] == ["memory_mib"]
    flags = {c["key"]: c["restart_needed"] for c in r.json()["changes"]}
    assert flags == {"memory_mib": True, "ha.priority": False}
    event = [e for e in await stored_events(store) if e.kind == "vm.changed"][-1]
    assert "next cold start" in event.reason


@pytest.mark.parametrize(
    ("settings", "field", "words"),
    [
        ({"memory_mib": 1}, "memory_mib", "greater than or equal to 16"),
        ({"ha.preferred_owners": ["n1", "n1"]}, "ha.preferred_owners", "twice"),
        ({"ha.possible_owners": ["n2"]}, "ha.possible_owners", "not among possible_owners"),
        ({"ha.failback.mode": "window"}, "ha.failback.mode", "must differ"),
        ({"name": "other"}, "name", "settable"),
        ({"disks": []}, "disks", "settable"),
        ({"desired_state": "stopped"}, "desired_state", "settable"),
        ({"boot.kernel": "/etc/shadow"}, "boot.kernel", "allowed_disk_dirs"),
    ],
)
async def test_refusals(
    api: httpx.AsyncClient, settings: dict[str, object], field: str, words: str
) -> None:
    before = await _create(api)
    r = await api.patch("/vms/web-1", json={"settings": settings})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and words in r.json()["error"], r.json()
    assert (await api.get("/vms/web-1")).json()["spec_revision"] == before["spec_revision"]


async def test_missing_vm_is_404(api: httpx.AsyncClient) -> None:
    r = await api.patch("/vms/ghost", json={"settings": {"vcpus": 2}})
    assert r.status_code == 404


async def test_readers_cannot_edit(api: httpx.AsyncClient, store: MemoryStore) -> None:
    await _create(api)
    async with api_client(store, KEYS, role=Role.READER) as reader:
        r = await reader.patch("/vms/web-1", json={"settings": {"vcpus": 2}})
        assert r.status_code == 403
    async with api_client(store, KEYS, role=Role.OPERATOR) as operator:
        r = await operator.patch("/vms/web-1", json={"settings": {"vcpus": 2}})
        assert r.status_code == 200, r.text
