"""Checkpoints through the API: the operation stored with the VM's job key (so it excludes
migrations and storage moves of the VM), its node chosen, refusals with their reason."""

from __future__ import annotations

import uuid

import httpx

from hvcluster.models.base import decode, encode
from hvcluster.models.checkpoint import Checkpoint, CheckpointList, CheckpointOp
from hvcluster.models.lifecycle import VMState
from hvcluster.models.node import Node
from hvcluster.models.storage import Volume
from hvcluster.models.token import Role
from hvcluster.models.vm import Disk, Placement, VMSpec, VMStatus
from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import KEYS, add_node, kinds
from tests.tokens import api_client


async def setup(store: MemoryStore) -> None:
    """n1 and n2 alive, n2 seeing volume a (both b); db running on n1 (a qcow2 disk and a read-only
    one), raw running on n1 (a raw disk), off stopped (placed nowhere) with its disk on a."""
    await add_node(store, "n1")
    await add_node(store, "n2")
    for name, volumes in (("n1", ("b",)), ("n2", ("a", "b"))):
        kv = await store.get(KEYS.node(name))
        assert kv is not None
        node = decode(Node, kv.key, kv.value).model_copy(update={"volumes": volumes})
        await store.put(KEYS.node(name), encode(node))
    for name in ("a", "b"):
        volume = Volume(name=name, path=f"/srv/{name}", id=uuid.uuid4().hex)
        await store.put(KEYS.volume(name), encode(volume))
    iso = Disk(volume="a", path="iso", readonly=True)
    specs = {
        "db": (Disk(volume="a", path="db.qcow2"), iso),
        "raw": (Disk(volume="a", path="raw.img", format="raw"),),
    }
    for vm, disks in specs.items():
        await store.put(KEYS.vm(vm), encode(VMSpec(name=vm, disks=disks)))
        await store.put(KEYS.placement(vm), encode(Placement(node="n1", epoch=4)))
        status = VMStatus(vm=vm, node="n1", epoch=4, state=VMState.RUNNING, since=1.0)
        await store.put(KEYS.status(vm), encode(status))
    off = VMSpec(name="off", disks=(Disk(volume="a", path="off.qcow2"),), desired_state="stopped")
    await store.put(KEYS.vm("off"), encode(off))


async def test_an_operation_is_stored_and_holds_the_vm(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await setup(store)
    r = await api.post("/vms/db/checkpoints", json={"name": "before-upgrade"})
    assert r.status_code == 202, r.text
    op = CheckpointOp.model_validate(r.json())
    assert (op.vm, op.node, op.epoch, op.action.value, op.state.value) == (
        "db", "n1", 4, "create", "requested",
    )  # fmt: skip
    assert (await api.get(f"/checkpoint-ops/{op.id}")).json()["name"] == "before-upgrade"
    assert "checkpoint.requested" in await kinds(store)
    held = f"vm db is busy with checkpoint create 'before-upgrade' ({op.id}, requested)"
    for method, path, body in (
        ("POST", "/vms/db/checkpoints", {"name": "other"}),
        ("POST", "/vms/db/move", {"to": "n2"}),
        ("POST", "/vms/db/move-storage", {"volume": "b"}),
    ):
        again = await api.request(method, path, json=body)
        assert again.status_code == 409 and again.json()["error"] == held, again.text

    # the agent's result: the list written, the job key released (done by hand here)
    await store.delete(KEYS.job("db"))
    listed = CheckpointList(
        vm="db", checkpoints=(Checkpoint(name="before-upgrade", size=9, memory=True),)
    )
    await store.put(KEYS.checkpoints("db"), encode(listed))
    shown = (await api.get("/vms/db/checkpoints")).json()
    assert [(c["name"], c["memory"], c["size"]) for c in shown["checkpoints"]] == [
        ("before-upgrade", True, 9)
    ]
    taken = await api.post("/vms/db/checkpoints", json={"name": "before-upgrade"})
    assert taken.status_code == 409 and "has a checkpoint 'before-upgrade' already" in taken.text
    lost = await api.post("/vms/db/move-storage", json={"volume": "b"})
    assert lost.status_code == 409 and "has checkpoints (before-upgrade)" in lost.text
    assert "block mirror drops internal snapshots" in lost.json()["error"]
    revert = await api.post("/vms/db/checkpoints/before-upgrade/revert")
    assert revert.status_code == 202 and revert.json()["action"] == "revert"


async def test_refusals_name_the_reason(api: httpx.AsyncClient, store: MemoryStore) -> None:
    await setup(store)
    cases = {
        ("POST", "/vms/db/checkpoints", "Bad Name"): (422, "name: invalid checkpoint name"),
        ("POST", "/vms/db/checkpoints", "1st"): (422, "starting with a letter"),
        ("POST", "/vms/raw/checkpoints", "cp"): (409, "disk 0 of vm raw (raw.img) is raw"),
        ("POST", "/vms/nope/checkpoints", "cp"): (404, "vm 'nope' not found"),
        ("POST", "/vms/db/checkpoints/cp/revert", ""): (404, "vm db has no checkpoint 'cp'"),
        ("DELETE", "/vms/db/checkpoints/cp", ""): (404, "vm db has no checkpoint 'cp'"),
    }
    for (method, path, name), (code, why) in cases.items():
        body = {"name": name} if name else None
        r = await api.request(method, path, json=body)
        assert r.status_code == code, (path, r.text)
        assert why in r.json()["error"], r.json()["error"]
    assert (await api.post("/vms/db/checkpoints")).status_code == 422
    migrating = VMStatus(vm="db", node="n1", epoch=4, state=VMState.MIGRATING, since=2.0)
    await store.put(KEYS.status("db"), encode(migrating))
    r = await api.post("/vms/db/checkpoints", json={"name": "cp"})
    assert r.status_code == 409 and "vm db is migrating on n1" in r.text
    async with api_client(store, KEYS, role=Role.READER) as reader:
        denied = await reader.post("/vms/off/checkpoints", json={"name": "cp"})
        assert denied.status_code == 403
        assert (await reader.get("/vms/off/checkpoints")).status_code == 200


async def test_a_stopped_vm_goes_to_a_node_that_sees_its_disks(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await setup(store)
    r = await api.post("/vms/off/checkpoints", json={"name": "cold"})
    assert r.status_code == 202, r.text
    assert (r.json()["node"], r.json()["epoch"]) == ("n2", 0)  # n1 does not see volume a


async def test_an_older_namesakes_list_is_not_this_vms(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await setup(store)
    spec = VMSpec(name="db", disks=(Disk(volume="a", path="db.qcow2"),), uid=uuid.uuid4().hex)
    await store.put(KEYS.vm("db"), encode(spec))
    kept = Checkpoint(name="old", size=9, memory=True)
    old = CheckpointList(vm="db", uid=uuid.uuid4().hex, checkpoints=(kept,))
    await store.put(KEYS.checkpoints("db"), encode(old))
    assert (await api.get("/vms/db/checkpoints")).json()["checkpoints"] == []
    assert (await api.post("/vms/db/checkpoints", json={"name": "old"})).status_code == 202


async def test_a_deleted_vms_list_goes_with_it(api: httpx.AsyncClient, store: MemoryStore) -> None:
    """Deleting a VM (with its disks or not) deletes its checkpoint list in the same txn."""
    await setup(store)
    for vm in ("db", "off"):
        listed = CheckpointList(vm=vm, checkpoints=(Checkpoint(name="cp", size=1),))
        await store.put(KEYS.checkpoints(vm), encode(listed))
    assert (await api.delete("/vms/db")).status_code == 202
    assert (await api.delete("/vms/off", params={"disks": "true"})).status_code == 202
    assert await store.get(KEYS.checkpoints("db")) is None
    assert await store.get(KEYS.checkpoints("off")) is None


async def test_a_stopped_vm_does_not_start_during_its_checkpoint(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    """qemu-img snapshot works on the disks of a stopped VM: a start waits for its end."""
    await setup(store)
    r = await api.post("/vms/off/checkpoints", json={"name": "cold"})
    assert r.status_code == 202, r.text
    started = await api.post("/vms/off/start")
    assert started.status_code == 409, started.text
    assert "busy with checkpoint create 'cold'" in started.json()["error"]
    spec = await store.get(KEYS.vm("off"))
    assert spec is not None and decode(VMSpec, spec.key, spec.value).desired_state == "stopped"
    assert (await api.post("/vms/db/checkpoints", json={"name": "warm"})).status_code == 202
    assert (await api.post("/vms/db/start")).status_code == 202, "a running VM's: nothing to do"
