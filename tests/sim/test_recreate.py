"""Delete a VM while it is still stopping and create it again under the same name: the new
VM runs. Its placement and status carry its own uid, so the old VM's last report ("running",
its process long gone) is never taken for the new one's."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvcluster.drivers.sim.model import SimParams
from hvcluster.models.lifecycle import VMState
from tests.sim.cluster import SimCluster, with_api

pytestmark = pytest.mark.timeout(90)


async def test_a_vm_deleted_while_stopping_and_created_again_runs(tmp_path: Path) -> None:
    cluster = SimCluster(tmp_path)
    await cluster.start("n1")
    driver = cluster.drivers["n1"]
    driver.params = SimParams(boot_s=0.3, shutdown_s=3.0)  # a guest slow to power off
    async with with_api(cluster) as api:
        r = await api.post("/vms", json={"name": "web", "memory_mib": 256})
        assert r.status_code == 201, r.text
        old_uid = r.json()["spec"]["uid"]
        await cluster.wait_running("web")
        assert (await api.post("/vms/web/stop")).status_code == 202

        async def stopping() -> bool:
            here = {vm.name: vm.state for vm in await driver.list()}
            return await cluster.placement("web") is None and here.get("web") is VMState.STOPPING

        await cluster.wait_for(stopping, 20, "web unplaced and shutting down")
        assert (await api.delete("/vms/web")).status_code == 202

        async def gone() -> bool:
            return all(vm.state is VMState.STOPPED for vm in await driver.list())

        await cluster.wait_for(gone, 20, "the old web's guest gone")
        r = await api.post("/vms", json={"name": "web", "memory_mib": 256})
        assert r.status_code == 201, r.text
        new_uid = r.json()["spec"]["uid"]
        assert new_uid and new_uid != old_uid

        async def runs_as_new() -> bool:
            status = await cluster.status("web")
            shown = (await api.get("/vms/web")).json()
            return (
                status is not None
                and status.uid == new_uid
                and shown["state"] == "running"
                and await cluster.running_on("web") == "n1"
            )

        await cluster.wait_for(runs_as_new, 30, "the new web running")
        placement = await cluster.placement("web")
        assert placement is not None and placement.uid == new_uid and placement.epoch > 1


async def test_an_agent_never_starts_a_vm_on_a_host_file_written_past_the_api(
    tmp_path: Path,
) -> None:
    """A spec put into etcd directly (no API check) naming /etc/passwd: the agent resolves
    the path itself, refuses to start the VM and says why."""
    cluster = SimCluster(tmp_path)
    try:
        await cluster.start("n1")
        await cluster.create_vm("thief", disks=[{"path": "/etc/passwd", "format": "raw"}])

        async def refused() -> str:
            status = await cluster.status("thief")
            failed = status is not None and status.state is VMState.FAILED
            return status.last_error if failed and status is not None else ""

        error = await cluster.wait_for(refused, 20, "thief refused")
        assert "disks[0].path" in error and "allowed_disk_dirs" in error
        assert await cluster.running_on("thief") is None
        said = await cluster.event_list("vm.start_failed", "vm/thief")
        assert said and "allowed_disk_dirs" in said[0].reason
    finally:
        await cluster.stop()
