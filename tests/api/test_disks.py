"""Disks and volumes through the API: a disk is VOLUME:relative/path in one canonical form,
absolute only under directories the cluster config allows; a volume is never / nor a system
directory and needs the marker an admin placed. Each bad request is a 4xx naming the field,
and changes nothing in the store or on disk."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from hvcluster.models.base import decode, encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.lifecycle import VMState
from hvcluster.models.storage import MARKER
from hvcluster.models.vm import Placement, VMSpec, VMStatus
from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import KEYS, spec


async def nothing_stored(store: MemoryStore, kind: str) -> bool:
    return (await store.range(KEYS.prefix(kind))).kvs == ()


async def refused(api: httpx.AsyncClient, path: str, body: dict[str, Any], field: str) -> str:
    r = await api.post(path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field, r.text
    message: str = r.json()["error"]
    return message


@pytest.mark.parametrize("typed", ["./db/root.qcow2", "db//root.qcow2", "db/./root.qcow2/"])
async def test_a_disk_is_stored_in_one_canonical_form(
    api: httpx.AsyncClient, store: MemoryStore, typed: str
) -> None:
    r = await api.post("/vms", json=spec("db", disks=[{"volume": "csv1", "path": typed}]))
    assert r.status_code == 201, r.text
    kv = await store.get(KEYS.vm("db"))
    assert kv is not None
    stored = decode(VMSpec, kv.key, kv.value).disks[0]
    assert (stored.volume, stored.path, stored.file) == (
        "csv1",
        "db/root.qcow2",
        "csv1:db/root.qcow2",
    )


@pytest.mark.parametrize(
    ("disk", "words"),
    [
        ({"volume": "csv1", "path": "../other/root.qcow2"}, "'..'"),
        ({"volume": "csv1", "path": "db/../../etc/passwd"}, "'..'"),
        ({"volume": "csv1", "path": "/etc/passwd"}, "relative to its volume"),
        ({"volume": "csv1", "path": "./"}, "names no file"),
        ({"path": "/srv/disks/../../etc/passwd"}, "'..'"),
        ({"volume": "csv1", "path": ".hvc-migration-state/web-m1.state"}, "cluster's own"),
        ({"volume": "csv1", "path": "./.hvc-volume"}, "cluster's own"),
    ],
)
async def test_disk_paths_leaving_their_place_are_refused(
    api: httpx.AsyncClient, store: MemoryStore, disk: dict[str, Any], words: str
) -> None:
    message = await refused(api, "/vms", spec("db", disks=[disk]), "disks.0.path")
    assert words in message
    assert await nothing_stored(store, "vms")


async def test_the_same_file_named_twice_in_one_spec_is_refused(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    disks = [{"volume": "csv1", "path": "a.qcow2"}, {"volume": "csv1", "path": "./a.qcow2"}]
    message = await refused(api, "/vms", spec("db", disks=disks), "disks")
    assert "csv1:a.qcow2 named twice" in message
    assert await nothing_stored(store, "vms")


async def test_a_host_file_is_no_disk_unless_its_directory_is_allowed(
    api: httpx.AsyncClient, store: MemoryStore, tmp_path: Path
) -> None:
    message = await refused(api, "/vms", spec("x", disks=[{"path": "/etc/passwd"}]), "disks.0.path")
    assert "allowed_disk_dirs" in message and "none" in message
    assert await nothing_stored(store, "vms")
    allowed = tmp_path / "vm-disks"
    config = ClusterConfig(name="t", allowed_disk_dirs=(str(allowed),))
    await store.put(KEYS.config, encode(config))
    for bad in ("/etc/passwd", str(allowed), f"{allowed}-other/a.qcow2"):
        message = await refused(api, "/vms", spec("x", disks=[{"path": bad}]), "disks.0.path")
        assert str(allowed) in message
    assert await nothing_stored(store, "vms")
    ok = await api.post("/vms", json=spec("x", disks=[{"path": f"{allowed}//x/./a.qcow2"}]))
    assert ok.status_code == 201, ok.text
    assert ok.json()["spec"]["disks"][0]["path"] == f"{allowed}/x/a.qcow2"


@pytest.mark.parametrize("field", ["kernel", "initrd"])
async def test_kernel_and_initrd_come_only_from_allowed_directories(
    api: httpx.AsyncClient, store: MemoryStore, tmp_path: Path, field: str
) -> None:
    """An initrd is loaded into the guest's memory: /etc/shadow there is a leak like a disk."""
    config = ClusterConfig(name="t", allowed_disk_dirs=(str(tmp_path),))
    await store.put(KEYS.config, encode(config))
    boot = {"kernel": str(tmp_path / "vmlinuz"), "initrd": str(tmp_path / "initrd.img")}
    boot[field] = "/etc/shadow"
    message = await refused(api, "/vms", spec("x", boot=boot), f"boot.{field}")
    assert "allowed_disk_dirs" in message and str(tmp_path) in message
    assert await nothing_stored(store, "vms")
    ok = {"kernel": f"{tmp_path}/./vmlinuz", "initrd": f"{tmp_path}//initrd.img"}
    r = await api.post("/vms", json=spec("x", boot=ok))
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["boot"]["initrd"] == f"{tmp_path}/initrd.img"


def test_allowed_disk_dirs_are_never_system_directories() -> None:
    for bad in ("/", "/etc", "/usr/lib/x", "/var/lib", "relative"):
        with pytest.raises(ValueError, match=r"not a disk directory|must be an absolute path"):
            ClusterConfig(allowed_disk_dirs=(bad,))


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/", "/ is a system directory"),
        ("/etc", "/etc is a system directory"),
        ("/usr/local/vms", "/usr holds the host's own files"),
        ("/boot/", "/boot is a system directory"),
        ("/var/lib", "/var/lib is a system directory"),
        ("/srv/../etc", "'..'"),
    ],
)
async def test_a_volume_is_never_root_nor_a_system_directory(
    api: httpx.AsyncClient, store: MemoryStore, path: str, words: str
) -> None:
    message = await refused(api, "/volumes", {"name": "csv1", "path": path}, "path")
    assert words in message
    assert await nothing_stored(store, "volumes")


async def test_a_volume_needs_the_marker_an_admin_placed(
    api: httpx.AsyncClient, store: MemoryStore, tmp_path: Path
) -> None:
    root = tmp_path / "csv1"
    root.mkdir()
    message = await refused(api, "/volumes", {"name": "csv1", "path": str(root)}, "path")
    assert "no volume marker" in message and f"hvc volume mark {root}" in message
    assert list(root.iterdir()) == []  # the API never writes the marker
    assert await nothing_stored(store, "volumes")
    (root / MARKER).write_text("not an id!\n")
    message = await refused(api, "/volumes", {"name": "csv1", "path": str(root)}, "path")
    assert "holds no volume id" in message and "not an id" not in message
    (root / MARKER).unlink()
    (root / MARKER).symlink_to("/etc/hostname")  # a host file's content as the volume id
    message = await refused(api, "/volumes", {"name": "csv1", "path": str(root)}, "path")
    assert "is not a regular file" in message
    (root / MARKER).unlink()
    link = tmp_path / "to-etc"
    link.symlink_to("/etc")
    message = await refused(api, "/volumes", {"name": "csv2", "path": str(link)}, "path")
    assert "leads to /etc" in message
    assert await nothing_stored(store, "volumes")
    placed = uuid.uuid4().hex
    (root / MARKER).write_text(placed + "\n")
    r = await api.post("/volumes", json={"name": "csv1", "path": str(root)})
    assert r.status_code == 201, r.text
    assert r.json()["id"] == placed
    assert sorted(p.name for p in root.iterdir()) == [MARKER]


async def test_a_vm_created_again_never_shows_the_old_ones_status(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    first = (await api.post("/vms", json=spec("web", uid="f" * 32))).json()["spec"]
    assert len(first["uid"]) == 32 and first["uid"] != "f" * 32  # the API gives it
    # the old VM ran on n1; its placement and last report outlive it
    old = Placement(node="n1", epoch=1, uid=first["uid"])
    await store.put(KEYS.placement("web"), encode(old))
    running = VMStatus(vm="web", node="n1", epoch=1, state=VMState.RUNNING, uid=first["uid"])
    await store.put(KEYS.status("web"), encode(running))
    assert (await api.get("/vms/web")).json()["state"] == "running"
    assert (await api.delete("/vms/web")).status_code == 202
    second = (await api.post("/vms", json=spec("web"))).json()
    assert second["spec"]["uid"] not in ("", first["uid"])
    shown = (await api.get("/vms/web")).json()
    assert shown["state"] == "pending" and shown["node"] == ""


async def test_one_directory_is_one_volume(
    api: httpx.AsyncClient, store: MemoryStore, tmp_path: Path
) -> None:
    """A directory added again (by another name, spelling or symlink) or one inside or
    around a volume would give one file two names (csv1:x, csv2:x): two locks, and a spec
    naming one would not keep the file from a deletion under the other."""
    root = tmp_path / "vols"
    (root / "sub").mkdir(parents=True)
    (root / MARKER).write_text(uuid.uuid4().hex + "\n")
    (root / "sub" / MARKER).write_text(uuid.uuid4().hex + "\n")
    (tmp_path / "alias").symlink_to(root)
    r = await api.post("/volumes", json={"name": "csv1", "path": str(root)})
    assert r.status_code == 201, r.text
    before = await store.range(KEYS.prefix("volumes"))
    for path in (str(root), f"{root}/", str(tmp_path / "alias")):
        message = await refused(api, "/volumes", {"name": "csv2", "path": path}, "path")
        assert f"volume csv1's directory ({root}, id" in message, message
    message = await refused(api, "/volumes", {"name": "csv2", "path": str(root / "sub")}, "path")
    assert f"inside volume csv1 ({root})" in message, message
    assert (await store.range(KEYS.prefix("volumes"))).kvs == before.kvs
    r = await api.post("/volumes", json={"name": "csv1", "path": str(root)})
    assert r.status_code == 409, r.text  # the same name: as before, it exists


async def test_a_volume_around_another_is_refused(
    api: httpx.AsyncClient, store: MemoryStore, tmp_path: Path
) -> None:
    outer, inner = tmp_path / "vols", tmp_path / "vols" / "sub"
    inner.mkdir(parents=True)
    (outer / MARKER).write_text(uuid.uuid4().hex + "\n")
    (inner / MARKER).write_text(uuid.uuid4().hex + "\n")
    assert (await api.post("/volumes", json={"name": "inner", "path": str(inner)})).is_success
    message = await refused(api, "/volumes", {"name": "outer", "path": str(outer)}, "path")
    assert f"volume inner ({inner}) lies inside it" in message, message


async def test_a_file_on_a_volume_is_named_by_its_volume_only(
    api: httpx.AsyncClient, store: MemoryStore, tmp_path: Path
) -> None:
    """An allowed directory holding a volume: a disk there is named csv1:x, never by its
    absolute path as well (a spec naming it so would not keep it from deletion as csv1:x)."""
    shared = tmp_path / "shared"
    (shared / "csv1").mkdir(parents=True)
    (shared / "csv1" / MARKER).write_text(uuid.uuid4().hex + "\n")
    config = ClusterConfig(name="t", allowed_disk_dirs=(str(shared),))
    await store.put(KEYS.config, encode(config))
    assert (
        await api.post("/volumes", json={"name": "csv1", "path": str(shared / "csv1")})
    ).is_success
    body = spec("x", disks=[{"path": f"{shared}/csv1//db/root.qcow2"}])
    message = await refused(api, "/vms", body, "disks.0.path")
    assert "is on volume csv1: name it as volume csv1, path db/root.qcow2" in message
    assert await nothing_stored(store, "vms")
    ok = await api.post("/vms", json=spec("x", disks=[{"path": f"{shared}/csv1.qcow2"}]))
    assert ok.status_code == 201, ok.text
