"""A size edit of a running VM waits for its next cold start, and moves before that carry
the size it runs with (in-process cluster, real agents and controller, sim VMs whose
incoming side refuses a state of another memory size or vCPU count, as QEMU does).

The VM runs on n1 with 256 MiB and 1 vCPU; its spec is edited to 512 MiB and 2 vCPUs. A
live move to n2 and a quick move back to n1 both succeed, the VM running with the old size
on each target; its next cold start (a stop and start) runs it with the new size. A
drain's automatic move keeps the running size too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hvcluster.models.lifecycle import MigrationState, NodeAdminState, VMState
from hvcluster.models.migration import RunningSize
from tests.sim.cluster import FAST, SimCluster, node_record, with_api
from tests.sim.test_cpu_compat import finished

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[SimCluster, httpx.AsyncClient]]:
    cluster = SimCluster(tmp_path, FAST)
    async with with_api(cluster) as api:
        yield cluster, api


async def size_on(cluster: SimCluster, node: str) -> tuple[int, int]:
    """(memory_mib, vcpus) ``web`` runs with on ``node``, as its driver runs it."""
    spec = await cluster.drivers[node].running_spec("web")
    return spec.memory_mib, spec.vcpus


async def stop_and_start(cluster: SimCluster, api: httpx.AsyncClient, node: str) -> None:
    """``web`` stopped (unplaced, its guest off, its status saying so), then started on
    ``node`` again: a cold start."""
    assert (await api.post("/vms/web/stop")).status_code == 202

    async def stopped() -> bool:
        status = await cluster.status("web")
        here = [vm.state for vm in await cluster.drivers[node].list() if vm.name == "web"]
        return (
            await cluster.placement("web") is None
            and here == [VMState.STOPPED]
            and status is not None
            and status.state is VMState.STOPPED
        )

    await cluster.wait_for(stopped, 20, "web unplaced, stopped and reported stopped")
    assert (await api.post("/vms/web/start")).status_code == 202
    assert await cluster.wait_running("web", 20) == node


async def test_moves_after_a_size_edit_keep_the_running_size_until_a_cold_start(
    setup: tuple[SimCluster, httpx.AsyncClient],
) -> None:
    cluster, api = setup
    await cluster.add_volume("csv")  # a quick move saves the state there
    await cluster.start("n1", "n2")
    await cluster.create_vm("web", vcpus=1, ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("web") == "n1"
    assert await size_on(cluster, "n1") == (256, 1)

    r = await api.patch("/vms/web", json={"settings": {"memory_mib": 512, "vcpus": 2}})
    assert r.status_code == 200, r.text
    assert await size_on(cluster, "n1") == (256, 1)  # waits for its next cold start

    r = await api.post("/vms/web/move", json={"to": "n2", "kind": "live"})
    assert r.status_code == 202, r.text
    rec = await finished(cluster, r.json()["id"])
    assert rec.state is MigrationState.DONE, rec.reason
    assert rec.running == RunningSize(memory_mib=256, vcpus=1)  # the source's, not the spec's
    assert await cluster.wait_running("web", 10, not_on="n1") == "n2"
    assert await size_on(cluster, "n2") == (256, 1)

    r = await api.post("/vms/web/move", json={"to": "n1", "kind": "quick"})
    assert r.status_code == 202, r.text
    rec = await finished(cluster, r.json()["id"])
    assert rec.state is MigrationState.DONE, rec.reason
    assert await cluster.wait_running("web", 10, not_on="n2") == "n1"
    assert await size_on(cluster, "n1") == (256, 1)
    status = await cluster.status("web")
    assert status is not None and status.restarts == 0  # never restarted on the way

    # the next cold start takes the new size
    await stop_and_start(cluster, api, "n1")
    assert await size_on(cluster, "n1") == (512, 2)


async def test_a_stop_and_start_after_a_size_edit_takes_the_new_size(
    setup: tuple[SimCluster, httpx.AsyncClient],
) -> None:
    """The admin's cold start: the stopped VM's status says stopped (it has no placement left
    to report under), so the start is not held waiting for it to stop."""
    cluster, api = setup
    await cluster.start("n1", "n2")
    await cluster.create_vm("web", vcpus=1, ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("web") == "n1"
    r = await api.patch("/vms/web", json={"settings": {"memory_mib": 512, "vcpus": 2}})
    assert r.status_code == 200, r.text
    await stop_and_start(cluster, api, "n1")
    assert await size_on(cluster, "n1") == (512, 2)


async def test_a_drain_after_a_size_edit_moves_the_vm_live_with_its_running_size(
    setup: tuple[SimCluster, httpx.AsyncClient],
) -> None:
    cluster, api = setup
    await cluster.start("n1", "n2")
    await cluster.create_vm("web", vcpus=1, ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("web") == "n1"
    r = await api.patch("/vms/web", json={"settings": {"memory_mib": 512}})
    assert r.status_code == 200, r.text
    assert (await api.post("/nodes/n1/drain")).status_code == 202

    async def paused() -> bool:
        return (await node_record(cluster, "n1")).admin_state is NodeAdminState.PAUSED

    await cluster.wait_for(paused, 60, "n1 drained and paused")
    assert await cluster.wait_running("web", 10) == "n2"
    kinds = [(m["kind"], m["state"]) for m in (await api.get("/migrations")).json()["migrations"]]
    assert kinds == [("live", "done")]  # no failed try, no cold move
    assert await size_on(cluster, "n2") == (256, 1)
