"""An agent's part of disk safety, with real files in tmp dirs and the memory store: one
lock per file whatever its spelling, paths resolved on the host (no symlink leads out of a
volume or an allowed directory), and deletions of files only the cluster created for that
VM and no VM's spec names; the others are kept, with an event saying why."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hvcluster.agent.disks import DiskBusy, DiskError, VolumeDisks
from hvcluster.host.storage import check_volume
from hvcluster.models.base import encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.storage import MARKER, DiskDeletion, Volume
from hvcluster.models.vm import Boot, Disk, VMSpec
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore

pytestmark = pytest.mark.timeout(30)
KEYS = Keys("t")


class Said:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    async def __call__(self, kind: str, subject: str, reason: str) -> None:
        self.events.append((kind, reason))


async def test_one_file_is_one_lock_however_it_is_spelled(store: MemoryStore) -> None:
    lease = (await store.grant(30)).id
    n1 = VolumeDisks(store, KEYS, "n1", lambda: lease)
    n2 = VolumeDisks(store, KEYS, "n2", lambda: lease)
    running = VMSpec(name="db", disks=(Disk(volume="csv1", path="db/root.qcow2"),))
    assert (await store.txn(*await n1.lock_ops(running))).succeeded
    for spelling in ("./db/root.qcow2", "db//root.qcow2", "db/./root.qcow2"):
        other = VMSpec(name="db2", disks=(Disk(volume="csv1", path=spelling),))
        with pytest.raises(DiskBusy, match=r"csv1:db/root\.qcow2 is locked by n1 db"):
            await n2.lock_ops(other)
    held = await store.range(KEYS.lock("disk:"))
    assert [kv.key for kv in held.kvs] == [KEYS.lock("disk:csv1:db/root.qcow2")]


async def test_paths_are_resolved_on_the_host_and_kept_in_their_place(
    store: MemoryStore, tmp_path: Path
) -> None:
    volume, allowed = tmp_path / "csv1", tmp_path / "vm-disks"
    (volume / "db").mkdir(parents=True)
    allowed.mkdir()
    (volume / "db" / "out").symlink_to("/etc")
    (allowed / "passwd.img").symlink_to("/etc/passwd")
    disks = VolumeDisks(store, KEYS, "n1", lambda: 0)
    disks.mounts = {"csv1": volume}
    ok = VMSpec(name="db", disks=(Disk(volume="csv1", path="db/root.qcow2"),))
    await disks.check(ok)
    out = VMSpec(name="db", disks=(Disk(volume="csv1", path="db/out/passwd", format="raw"),))
    with pytest.raises(DiskError, match=r"disks\[0\].path: .*leaves volume"):
        await disks.check(out)
    host_file = VMSpec(name="x", disks=(Disk(path="/etc/passwd", format="raw"),))
    with pytest.raises(DiskError, match="allowed_disk_dirs: none"):
        await disks.check(host_file)  # a spec written to etcd directly, past the API
    config = ClusterConfig(name="t", allowed_disk_dirs=(str(allowed),))
    await store.put(KEYS.config, encode(config))
    await disks.check(VMSpec(name="x", disks=(Disk(path=f"{allowed}/a.qcow2"),)))
    with pytest.raises(DiskError, match="allowed_disk_dirs"):
        await disks.check(host_file)
    linked = VMSpec(name="x", disks=(Disk(path=f"{allowed}/passwd.img", format="raw"),))
    with pytest.raises(DiskError, match="leads to /etc/passwd"):
        await disks.check(linked)
    initrd = VMSpec(name="x", boot=Boot(kernel=f"{allowed}/k", initrd=f"{allowed}/passwd.img"))
    with pytest.raises(DiskError, match=r"boot\.initrd: .*leads to /etc/passwd"):
        await disks.check(initrd)


async def deletion(store: MemoryStore, vm: str, *paths: str) -> None:
    disks = tuple(Disk(volume="csv1", path=p) for p in paths)
    await store.put(KEYS.request(f"delete-disks/{vm}"), encode(DiskDeletion(vm=vm, disks=disks)))


async def test_only_files_the_cluster_created_for_the_vm_and_nobody_names_are_deleted(
    store: MemoryStore, tmp_path: Path
) -> None:
    root = tmp_path / "csv1"
    root.mkdir()
    for name in ("made.qcow2", "admins.qcow2", "shared.qcow2", "others.qcow2", "real.qcow2"):
        (root / name).write_bytes(b"data")
    (root / "link.qcow2").symlink_to(root / "real.qcow2")
    disks = VolumeDisks(store, KEYS, "n1", lambda: 0)
    disks.mounts = {"csv1": root}
    gone = VMSpec(name="old", disks=(Disk(volume="csv1", path="made.qcow2"),))
    for path in ("made.qcow2", "shared.qcow2", "link.qcow2"):
        await disks.record_created(Disk(volume="csv1", path=path), gone)
    other = VMSpec(name="other", disks=(Disk(volume="csv1", path="others.qcow2"),))
    await disks.record_created(other.disks[0], other)
    # another VM's spec names shared.qcow2 (as ./shared.qcow2: the same file)
    web = VMSpec(name="web", disks=(Disk(volume="csv1", path="./shared.qcow2"),))
    await store.put(KEYS.vm("web"), encode(web))
    names = ("made.qcow2", "admins.qcow2", "shared.qcow2", "others.qcow2", "link.qcow2")
    await deletion(store, "old", *names)
    said = Said()
    await disks.carry_out_deletions([], said)
    assert not (root / "made.qcow2").exists()
    for kept in ("admins.qcow2", "shared.qcow2", "others.qcow2", "real.qcow2", "link.qcow2"):
        assert (root / kept).exists(), kept
    assert await store.get(KEYS.request("delete-disks/old")) is None  # the request is done
    assert await store.get(KEYS.created_disk("csv1:made.qcow2")) is None
    assert await store.get(KEYS.created_disk("csv1:shared.qcow2")) is not None
    kinds = dict(said.events)
    assert kinds["vm.disks_deleted"] == "deleted disks of old: csv1:made.qcow2"
    why = kinds["vm.disks_kept"]
    assert "csv1:admins.qcow2 (the cluster did not create it)" in why
    assert "csv1:shared.qcow2 (vm web names it)" in why
    assert "csv1:others.qcow2 (the cluster created it for another vm other)" in why
    assert "csv1:link.qcow2 (it is (or lies under) a symlink" in why


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
async def test_a_disk_the_agent_creates_is_recorded_and_can_be_deleted(
    store: MemoryStore, tmp_path: Path
) -> None:
    disks = VolumeDisks(store, KEYS, "n1", lambda: 0)
    disks.mounts = {"csv1": tmp_path}
    spec = VMSpec(
        name="db",
        uid="a" * 32,
        disks=(Disk(volume="csv1", path="db/root.qcow2", size_gib=1 / 64),),
    )
    assert await disks.prepare(spec) == ["created csv1:db/root.qcow2 (0.015625 GiB)"]
    assert await store.get(KEYS.created_disk("csv1:db/root.qcow2")) is not None
    request = DiskDeletion(vm="db", disks=spec.disks, uid="b" * 32)  # another VM "db"
    await store.put(KEYS.request("delete-disks/db"), encode(request))
    said = Said()
    await disks.carry_out_deletions([], said)
    assert (tmp_path / "db" / "root.qcow2").exists()
    assert "created it for another vm db" in dict(said.events)["vm.disks_kept"]
    await store.put(
        KEYS.request("delete-disks/db"), encode(request.model_copy(update={"uid": spec.uid}))
    )
    await disks.carry_out_deletions([], said)
    assert not (tmp_path / "db" / "root.qcow2").exists()


def test_a_marker_that_is_a_symlink_is_never_followed(tmp_path: Path) -> None:
    """Whoever can write the shared storage must not read host files through the problem
    the agent reports (a node record anybody with the API reads)."""
    root = tmp_path / "csv1"
    root.mkdir()
    (root / MARKER).symlink_to("/etc/passwd")
    r = check_volume(Volume(name="csv1", path=str(root), id="a" * 32))
    assert not r.seen and "no marker" in (r.problem or "") and "root:" not in (r.problem or "")
    (root / MARKER).unlink()
    (root / MARKER).write_text("root:x:0:0:root:/root:/bin/bash\n")  # not an id: not shown
    r = check_volume(Volume(name="csv1", path=str(root), id="a" * 32))
    assert not r.seen and "holds no volume id" in (r.problem or "")
    assert "root:x" not in (r.problem or "")


async def test_a_file_is_kept_while_a_vm_spec_cannot_be_read(
    store: MemoryStore, tmp_path: Path
) -> None:
    """A spec that does not decode (written past the API, or before a rule tightened) may
    name the file: it is kept, with the reason, until that spec is readable or gone."""
    root = tmp_path / "csv1"
    root.mkdir()
    (root / "made.qcow2").write_bytes(b"data")
    disks = VolumeDisks(store, KEYS, "n1", lambda: 0)
    disks.mounts = {"csv1": root}
    gone = VMSpec(name="old", disks=(Disk(volume="csv1", path="made.qcow2"),))
    await disks.record_created(gone.disks[0], gone)
    await store.put(KEYS.vm("web"), b'{"name": "web", "disks": [{"volume": "csv1", "path": 1}]}')
    await deletion(store, "old", "made.qcow2")
    said = Said()
    await disks.carry_out_deletions([], said)
    assert (root / "made.qcow2").exists()
    assert dict(said.events)["vm.disks_kept"] == (
        "kept disks of old: csv1:made.qcow2 (the spec of vm web cannot be read: it may name it)"
    )
