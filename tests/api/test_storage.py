"""Shared volumes and virtual switches through the API (MemoryStore)."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from hvcluster.models.base import decode, encode
from hvcluster.models.node import Node
from hvcluster.models.storage import MARKER, DiskDeletion, Volume
from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import KEYS, add_node, kinds, spec


def marked(root: Path, volume_id: str = "") -> Path:
    """A directory prepared as an admin does: the marker holding the volume's id."""
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text((volume_id or uuid.uuid4().hex) + "\n")
    return root


async def test_volume_add_list_show_remove(
    api: httpx.AsyncClient, store: MemoryStore, tmp_path: Path
) -> None:
    root = marked(tmp_path / "csv1")
    r = await api.post("/volumes", json={"name": "csv1", "path": f"{root}//"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["path"] == str(root) and body["id"] == (root / MARKER).read_text().strip()
    kv = await store.get(KEYS.volume("csv1"))
    assert kv is not None and decode(Volume, kv.key, kv.value).id == body["id"]
    again = await api.post("/volumes", json={"name": "csv1", "path": str(root)})
    assert again.status_code == 409 and "already exists" in again.json()["error"]
    bad = await api.post("/volumes", json={"name": "csv2", "path": "relative"})
    assert bad.status_code == 422 and bad.json()["field"] == "path"

    # a node reporting it shows up in the view
    await add_node(store, "n1")
    kv = await store.get(KEYS.node("n1"))
    assert kv is not None
    node = decode(Node, kv.key, kv.value).model_copy(
        update={"volumes": ("csv1",), "volume_free_mib": {"csv1": 1234}}
    )
    await store.put(KEYS.node("n1"), encode(node))
    shown = (await api.get("/volumes/csv1")).json()
    assert shown["seen_by"] == ["n1"] and shown["free_mib"] == {"n1": 1234}
    listed = (await api.get("/volumes")).json()
    assert [v["name"] for v in listed["volumes"]] == ["csv1"]

    assert (await api.delete("/volumes/csv1")).status_code == 200
    assert await store.get(KEYS.volume("csv1")) is None
    assert (await api.get("/volumes/csv1")).status_code == 404
    assert (await api.delete("/volumes/csv1")).status_code == 404
    assert {"volume.added", "volume.removed"} <= set(await kinds(store))


async def test_volume_in_use_is_not_removed(
    api: httpx.AsyncClient, store: MemoryStore, tmp_path: Path
) -> None:
    r = await api.post("/volumes", json={"name": "csv1", "path": str(marked(tmp_path / "csv1"))})
    assert r.status_code == 201, r.text
    disk = {"volume": "csv1", "path": "a.qcow2", "size_gib": 1}
    assert (await api.post("/vms", json=spec("db", disks=[disk]))).status_code == 201
    r = await api.delete("/volumes/csv1")
    assert r.status_code == 409 and "db" in r.json()["error"]
    assert (await api.get("/volumes/csv1")).json()["used_by"] == ["db"]
    # deleting the VM with its disks stores the request an agent carries out
    assert (await api.delete("/vms/db", params={"disks": "true"})).status_code == 202
    kv = await store.get(KEYS.request("delete-disks/db"))
    assert kv is not None
    request = decode(DiskDeletion, kv.key, kv.value)
    assert [(d.volume, d.path) for d in request.disks] == [("csv1", "a.qcow2")]
    assert (await api.delete("/volumes/csv1")).status_code == 200


async def test_delete_without_disks_flag_keeps_them(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    disk = {"volume": "csv1", "path": "a.qcow2"}
    await api.post("/vms", json=spec("db", disks=[disk]))
    assert (await api.delete("/vms/db")).status_code == 202
    assert await store.get(KEYS.request("delete-disks/db")) is None


async def test_switch_add_list_remove(api: httpx.AsyncClient, store: MemoryStore) -> None:
    r = await api.post("/switches", json={"name": "lan", "type": "external", "uplink": "eth1"})
    assert r.status_code == 201, r.text
    assert r.json()["bridge"] == "hvc-lan"
    assert (await api.post("/switches", json={"name": "lan"})).status_code == 409
    wrong = await api.post("/switches", json={"name": "p", "type": "private", "uplink": "eth1"})
    assert wrong.status_code == 422 and "uplink" in wrong.json()["error"]
    bad_if = await api.post(
        "/switches", json={"name": "x", "type": "external", "uplink": "eth0; reboot"}
    )
    assert bad_if.status_code == 422 and bad_if.json()["field"] == "uplink"
    nic = {"switch": "lan", "mac": "52:54:00:00:00:01"}
    await api.post("/vms", json=spec("web", nics=[nic]))
    used = await api.delete("/switches/lan")
    assert used.status_code == 409 and "web" in used.json()["error"]
    await api.delete("/vms/web")
    listed = (await api.get("/switches")).json()["switches"]
    assert [(s["name"], s["type"], s["uplink"]) for s in listed] == [("lan", "external", "eth1")]
    assert (await api.delete("/switches/lan")).status_code == 200
    assert (await api.get("/switches")).json()["switches"] == []
    assert {"switch.added", "switch.removed"} <= set(await kinds(store))


async def test_a_volume_added_again_adopts_the_id_of_its_marker(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    known = "0123456789abcdef0123456789abcdef"
    root = marked(tmp_path / "csv9", known)
    r = await api.post("/volumes", json={"name": "csv9", "path": str(root), "id": known})
    assert r.status_code == 201 and r.json()["id"] == known
    other = await api.post("/volumes", json={"name": "csv7", "path": str(root), "id": "f" * 32})
    assert other.status_code == 422 and other.json()["field"] == "id"
    assert known in other.json()["error"]
    bad = await api.post("/volumes", json={"name": "csv8", "path": str(root), "id": "../x"})
    assert bad.status_code == 422 and bad.json()["field"] == "id"
