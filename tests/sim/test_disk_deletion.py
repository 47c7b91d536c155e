"""'hvc vm rm X --disks' in an in-process cluster: the agent deletes the files the cluster
created for X that no VM's spec names, and keeps every other file, saying why."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sim.cluster import SimCluster, with_api

pytestmark = pytest.mark.timeout(60)


async def test_vm_rm_with_disks_deletes_only_what_the_cluster_created(tmp_path: Path) -> None:
    cluster = SimCluster(tmp_path)
    root = tmp_path / "csv1"
    await cluster.add_volume("csv1", root)
    (root / "db").mkdir()
    for name in ("made.qcow2", "admins.qcow2", "shared.qcow2"):
        (root / "db" / name).write_bytes(b"data")
    await cluster.start("n1")
    async with with_api(cluster) as api:
        disks = [
            {"volume": "csv1", "path": "db/made.qcow2"},
            {"volume": "csv1", "path": "./db/admins.qcow2"},
            {"volume": "csv1", "path": "db//shared.qcow2", "readonly": True},
        ]
        r = await api.post("/vms", json={"name": "db", "memory_mib": 256, "disks": disks})
        assert r.status_code == 201, r.text
        shared = [{"volume": "csv1", "path": "db/shared.qcow2", "readonly": True}]
        r = await api.post("/vms", json={"name": "web", "memory_mib": 256, "disks": shared})
        assert r.status_code == 201, r.text
        for path in ("db/made.qcow2", "db/shared.qcow2"):  # as the agent records its own
            await cluster.created_by_the_cluster("db", "csv1", path)
        await cluster.wait_running("db")
        r = await api.delete("/vms/db", params={"disks": "true"})
        assert r.status_code == 202, r.text

        async def done() -> bool:
            kv = await cluster.store.get(cluster.keys.request("delete-disks/db"))
            return kv is None and bool(await cluster.event_list("vm.disks_kept", "vm/db"))

        await cluster.wait_for(done, 20, "the deletion carried out")
        assert not (root / "db" / "made.qcow2").exists()
        assert (root / "db" / "admins.qcow2").read_bytes() == b"data"
        assert (root / "db" / "shared.qcow2").read_bytes() == b"data"
        [kept] = await cluster.event_list("vm.disks_kept", "vm/db")
        assert "csv1:db/admins.qcow2 (the cluster did not create it)" in kept.reason
        assert "csv1:db/shared.qcow2 (vm web names it)" in kept.reason
        [deleted] = await cluster.event_list("vm.disks_deleted", "vm/db")
        assert deleted.reason == "deleted disks of db: csv1:db/made.qcow2"
