"""Storage moves through the API: the record stored, refusals with their reason, cancel."""

from __future__ import annotations

import uuid

import httpx

from hvcluster.models.base import decode, encode
from hvcluster.models.lifecycle import MigrationState, VMState
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.models.node import Node
from hvcluster.models.storage import Volume
from hvcluster.models.vm import Disk, Placement, VMSpec, VMStatus
from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import KEYS, add_node, kinds


async def setup(store: MemoryStore) -> None:
    await add_node(store, "n1")
    await add_node(store, "n2")
    kv = await store.get(KEYS.node("n1"))
    assert kv is not None
    node = decode(Node, kv.key, kv.value).model_copy(
        update={"volumes": ("a", "b"), "volume_problems": {"c": "no marker yet"}}
    )
    await store.put(KEYS.node("n1"), encode(node))
    for name in ("a", "b", "c"):
        volume = Volume(name=name, path=f"/srv/{name}", id=uuid.uuid4().hex)
        await store.put(KEYS.volume(name), encode(volume))
    disks = (Disk(volume="a", path="db.qcow2"), Disk(volume="a", path="iso", readonly=True))
    for vm, state in (("db", VMState.RUNNING), ("off", VMState.STOPPED)):
        await store.put(KEYS.vm(vm), encode(VMSpec(name=vm, disks=disks)))
        await store.put(KEYS.placement(vm), encode(Placement(node="n1", epoch=4)))
        status = VMStatus(vm=vm, node="n1", epoch=4, state=state, since=1.0)
        await store.put(KEYS.status(vm), encode(status))


async def test_a_storage_move_is_stored_and_blocks_other_moves(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await setup(store)
    r = await api.post("/vms/db/move-storage", json={"volume": "b"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["state"], body["kind"], body["source"], body["target"]) == (
        "requested",
        "storage",
        "n1",
        "n1",
    )
    assert (body["volume"], body["epoch"]) == ("b", 4)
    kv = await store.get(KEYS.storage_move(body["id"]))
    assert kv is not None and decode(Migration, kv.key, kv.value).kind is MigrationKind.STORAGE
    assert [m["id"] for m in (await api.get("/storage-moves")).json()["moves"]] == [body["id"]]
    assert "storage.move_requested" in await kinds(store)
    held = f"vm db is already moving (storage move {body['id']}, requested)"
    again = await api.post("/vms/db/move-storage", json={"volume": "b"})
    assert again.status_code == 409 and again.json()["error"] == held
    live = await api.post("/vms/db/move", json={"to": "n2"})
    assert live.status_code == 409 and live.json()["error"] == held

    cancelled = await api.post(f"/storage-moves/{body['id']}/cancel", json={"reason": "oops"})
    assert cancelled.status_code == 202
    assert (cancelled.json()["state"], cancelled.json()["reason"]) == ("cancelled", "oops")
    late = await api.post(f"/storage-moves/{body['id']}/cancel")
    assert late.status_code == 202 and late.json()["state"] == MigrationState.CANCELLED
    assert await store.get(KEYS.job("db")) is None  # the cancel freed the VM
    after = await api.post("/vms/db/move-storage", json={"volume": "b"})
    assert after.status_code == 202, after.text
    assert (await api.get("/storage-moves/nope")).status_code == 404


async def test_refusals_name_the_reason(api: httpx.AsyncClient, store: MemoryStore) -> None:
    await setup(store)
    cases = {
        ("db", "c"): (409, "node n1 does not see it (no marker yet)"),
        ("db", "ghost"): (404, "volume 'ghost' not found"),
        ("db", "a"): (409, "no writable disk off volume 'a'"),
        ("off", "b"): (409, "vm off is not running (stopped)"),
        ("nope", "b"): (404, "vm 'nope' not found"),
        ("db", "Bad Name"): (422, "volume: invalid name"),
    }
    for (vm, volume), (code, why) in cases.items():
        r = await api.post(f"/vms/{vm}/move-storage", json={"volume": volume})
        assert r.status_code == code, (vm, volume, r.text)
        assert why in r.json()["error"], r.json()["error"]
    assert (await api.post("/vms/db/move-storage")).status_code == 422
    assert (await api.get("/storage-moves")).json()["moves"] == []


async def test_a_shared_nothing_move_needs_a_target_seeing_the_volume(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await setup(store)  # db has a read-only disk: it cannot move shared-nothing
    solo = VMSpec(name="solo", disks=(Disk(volume="a", path="solo.qcow2"),))
    await store.put(KEYS.vm("solo"), encode(solo))
    await store.put(KEYS.placement("solo"), encode(Placement(node="n2", epoch=2)))
    status = VMStatus(vm="solo", node="n2", epoch=2, state=VMState.RUNNING, since=1.0)
    await store.put(KEYS.status("solo"), encode(status))
    cases = {
        ("db", "n2", "b", "live"): (409, "copies every disk: disks [1] are read-only"),
        ("solo", "n1", "b", "quick"): (422, "a shared-nothing move is live"),
        ("solo", "n1", "ghost", "live"): (404, "volume 'ghost' not found"),
        ("solo", "n1", "c", "live"): (409, "n1 lacks volume 'c'"),
    }
    for (vm, to, volume, kind), (code, why) in cases.items():
        body = {"to": to, "with_storage": volume, "kind": kind}
        r = await api.post(f"/vms/{vm}/move", json=body)
        assert r.status_code == code, (vm, volume, r.text)
        assert why in r.json()["error"], r.json()["error"]
    # n1 sees b (n2, where it runs, does not see a's replacement: it need not)
    r = await api.post("/vms/solo/move", json={"to": "n1", "with_storage": "b"})
    assert r.status_code == 202, r.text
    kv = await store.get(KEYS.migration(r.json()["id"]))
    assert kv is not None
    rec = decode(Migration, kv.key, kv.value)
    assert (rec.volume, rec.kind, rec.target) == ("b", MigrationKind.LIVE, "n1")
