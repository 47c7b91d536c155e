"""VMs through the API: intent written to the store, state read back merged, bad input
refused naming the field, corrupt stored values skipped and reported."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import pytest

from hvcluster.models.base import decode, encode
from hvcluster.models.errors import StoreUnavailable
from hvcluster.models.lifecycle import VMState
from hvcluster.models.vm import Placement, VMSpec, VMStatus
from hvcluster.store.base import Compare, Op, Put, TxnResult
from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import KEYS, kinds, spec, stored_events
from tests.tokens import api_client

GARBAGE = b"\xff\xfe{not json"


async def stored_spec(store: MemoryStore, name: str) -> VMSpec:
    kv = await store.get(KEYS.vm(name))
    assert kv is not None
    return decode(VMSpec, kv.key, kv.value)


async def test_create_show_list_delete(api: httpx.AsyncClient, store: MemoryStore) -> None:
    r = await api.post("/vms", json=spec("web-1", vcpus=2, memory_mib=256))
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "web-1"
    assert r.json()["state"] == "pending"
    assert (await stored_spec(store, "web-1")).vcpus == 2

    shown = (await api.get("/vms/web-1")).json()
    assert shown["spec"]["memory_mib"] == 256
    assert shown["desired_state"] == "running"
    assert shown["placement"] is None and shown["status"] is None

    await api.post("/vms", json=spec("db-1", desired_state="stopped"))
    listed = (await api.get("/vms")).json()
    assert {v["name"]: v["state"] for v in listed["vms"]} == {"web-1": "pending", "db-1": "stopped"}
    assert listed["skipped"] == []

    r = await api.delete("/vms/web-1")
    assert r.status_code == 202
    assert await store.get(KEYS.vm("web-1")) is None
    assert (await api.get("/vms/web-1")).status_code == 404
    assert await kinds(store) == ["vm.created", "vm.created", "vm.deleted"]
    event = (await stored_events(store))[0]
    assert event.actor == "token:test-admin@n1"  # the token the request came with
    assert event.subject == "vm/web-1"


async def test_placement_and_status_are_merged(api: httpx.AsyncClient, store: MemoryStore) -> None:
    await api.post("/vms", json=spec("web-1"))
    await store.put(KEYS.placement("web-1"), encode(Placement(node="n2", epoch=3, reason="x")))
    vm = (await api.get("/vms/web-1")).json()
    assert (vm["node"], vm["state"]) == ("n2", "pending")  # placed, not reported yet

    status = VMStatus(vm="web-1", node="n2", epoch=3, state=VMState.RUNNING, pid=42)
    await store.put(KEYS.status("web-1"), encode(status))
    vm = (await api.get("/vms/web-1")).json()
    assert (vm["node"], vm["state"], vm["status"]["pid"]) == ("n2", "running", 42)

    # A report from an older epoch is about a placement that no longer holds.
    await store.put(KEYS.placement("web-1"), encode(Placement(node="n3", epoch=4)))
    listed = (await api.get("/vms")).json()["vms"][0]
    assert (listed["node"], listed["state"]) == ("n3", "pending")


async def test_start_and_stop_flip_desired_state(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await api.post("/vms", json=spec("web-1"))
    r = await api.post("/vms/web-1/stop", json={"reason": "maintenance"})
    assert r.status_code == 202
    assert r.json()["desired_state"] == "stopped"
    assert (await stored_spec(store, "web-1")).desired_state == "stopped"

    await api.post("/vms/web-1/stop")  # already stopped: nothing to do, no event
    r = await api.post("/vms/web-1/start")
    assert r.json()["desired_state"] == "running"
    assert (await stored_spec(store, "web-1")).desired_state == "running"

    events = await stored_events(store)
    assert [e.kind for e in events] == ["vm.created", "vm.stop_requested", "vm.start_requested"]
    assert events[1].reason == "maintenance"


class RacingStore(MemoryStore):
    """A store where another writer commits just before each of our next N compare-and-sets
    (what an agent or a second API server does at the worst moment)."""

    def __init__(self) -> None:
        super().__init__()
        self.races: list[tuple[str, bytes]] = []

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        if compares and self.races and any(c.target == "mod" for c in compares):
            key, value = self.races.pop(0)
            await self.put(key, value)
        return await super().txn(compares, success, failure)


async def test_stop_retries_when_another_writer_wins() -> None:
    store = RacingStore()
    async with api_client(store, KEYS) as api:
        await api.post("/vms", json=spec("web-1"))
        # Two other writers change the spec in between; our stop must keep their changes.
        bigger = VMSpec(name="web-1", vcpus=4)
        store.races = [(KEYS.vm("web-1"), encode(bigger)), (KEYS.vm("web-1"), encode(bigger))]
        r = await api.post("/vms/web-1/stop")
        assert r.status_code == 202, r.text
    final = await stored_spec(store, "web-1")
    assert (final.desired_state, final.vcpus) == ("stopped", 4)
    assert store.races == []
    await store.close()


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (spec("Bad_Name"), "name", "invalid name"),
        (spec(memory_mib=-5), "memory_mib", "greater than or equal to 16"),
        (spec(vcpus=0), "vcpus", "greater than 0"),
        (spec(ha={"priority": "urgent"}), "ha.priority", "high"),
        (
            spec(ha={"preferred_owners": ["n1"], "possible_owners": ["n2"]}),
            "ha",
            "not among possible_owners",
        ),
        (spec(colour="blue"), "colour", "Extra inputs are not permitted"),
        ({"vcpus": 1}, "name", "Field required"),
        (spec(disks=[{"path": "relative.qcow2"}]), "disks.0.path", "path must be absolute"),
    ],
)
async def test_bad_specs_are_refused_naming_the_field(
    api: httpx.AsyncClient, store: MemoryStore, body: dict[str, Any], field: str, words: str
) -> None:
    r = await api.post("/vms", json=body)
    assert r.status_code == 422, r.text
    answer = r.json()
    assert answer["field"] == field
    assert answer["error"].startswith(f"{field}: ")
    assert words in answer["error"]
    assert (await store.range(KEYS.prefix("vms"))).kvs == ()


async def test_body_that_is_not_json(api: httpx.AsyncClient) -> None:
    r = await api.post("/vms", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert "JSON" in r.json()["error"]


async def test_duplicates_conflict(api: httpx.AsyncClient, store: MemoryStore) -> None:
    assert (await api.post("/vms", json=spec("web-1"))).status_code == 201
    r = await api.post("/vms", json=spec("web-1", vcpus=8))
    assert r.status_code == 409
    assert r.json() == {"error": "vm 'web-1' already exists", "field": None}
    assert (await stored_spec(store, "web-1")).vcpus == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/vms/ghost"),
        ("DELETE", "/vms/ghost"),
        ("POST", "/vms/ghost/start"),
        ("POST", "/vms/ghost/stop"),
    ],
)
async def test_unknown_vm_is_404(api: httpx.AsyncClient, method: str, path: str) -> None:
    r = await api.request(method, path)
    assert r.status_code == 404
    assert r.json()["error"] == "vm 'ghost' not found"


async def test_bad_name_in_the_path(api: httpx.AsyncClient) -> None:
    r = await api.get("/vms/Not_A_Name")
    assert r.status_code == 422
    assert r.json()["field"] == "name"


async def test_unknown_path_speaks_the_same_json(api: httpx.AsyncClient) -> None:
    r = await api.get("/nothing/here")
    assert r.status_code == 404
    assert "no such API path" in r.json()["error"]


async def test_corrupt_spec_is_skipped_reported_once_and_deletable(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await api.post("/vms", json=spec("good"))
    await store.put(KEYS.vm("broken"), GARBAGE)
    await store.put(KEYS.placement("good"), b'{"node": "n1"}')  # epoch missing

    for _ in range(2):
        r = await api.get("/vms")
        assert r.status_code == 200
        answer = r.json()
        assert [v["name"] for v in answer["vms"]] == ["good"]
        assert answer["vms"][0]["placement"] is None
        skipped = {s["key"]: s["error"] for s in answer["skipped"]}
        assert set(skipped) == {KEYS.vm("broken"), KEYS.placement("good")}
        assert "epoch" in skipped[KEYS.placement("good")]

    reports = [e for e in await stored_events(store) if e.kind == "store.corrupt_value"]
    assert sorted(e.subject for e in reports) == sorted([KEYS.vm("broken"), KEYS.placement("good")])

    r = await api.get("/vms/broken")
    assert r.status_code == 409
    assert "corrupt value" in r.json()["error"]
    assert (await api.post("/vms/broken/stop")).status_code == 409
    assert (await api.delete("/vms/broken")).status_code == 202
    assert await store.get(KEYS.vm("broken")) is None

    # Written again (a new version), it is reported again.
    await store.put(KEYS.vm("broken"), GARBAGE)
    await api.get("/vms")
    assert len([k for k in await kinds(store) if k == "store.corrupt_value"]) == 3


class LogDownStore(MemoryStore):
    """A store whose event log cannot be written (every txn putting an event fails)."""

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        if any(isinstance(op, Put) and op.key.startswith(KEYS.prefix("events")) for op in success):
            raise StoreUnavailable("event log down (test)")
        return await super().txn(compares, success, failure)


async def test_a_change_that_committed_is_not_reported_failed_when_its_event_cannot_be() -> None:
    store = LogDownStore()
    async with api_client(store, KEYS) as api:
        r = await api.post("/vms", json=spec("web-1"))
        assert r.status_code == 201, r.text
        assert (await api.post("/vms/web-1/stop")).status_code == 202
    assert (await stored_spec(store, "web-1")).desired_state == "stopped"
    assert await kinds(store) == []
    await store.close()


async def test_start_gives_a_left_failed_vm_another_chance(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await api.post("/vms", json=spec("web-1"))
    failed = VMStatus(
        vm="web-1",
        node="",
        epoch=5,
        state=VMState.FAILED,
        last_error="no node fits",
        left_failed=True,
    )
    await store.put(KEYS.status("web-1"), encode(failed))
    assert (await api.get("/vms/web-1")).json()["state"] == "failed"

    r = await api.post("/vms/web-1/start")
    assert r.status_code == 202
    assert r.json()["state"] == "pending"
    assert await store.get(KEYS.status("web-1")) is None
    [cleared] = [e for e in await stored_events(store) if e.kind == "vm.failed_cleared"]
    assert "no node fits" in cleared.reason

    # An agent's own report is never touched by a start.
    running = VMStatus(vm="web-1", node="n2", epoch=6, state=VMState.RUNNING)
    await store.put(KEYS.status("web-1"), encode(running))
    await api.post("/vms/web-1/start")
    kv = await store.get(KEYS.status("web-1"))
    assert kv is not None and decode(VMStatus, kv.key, kv.value) == running
