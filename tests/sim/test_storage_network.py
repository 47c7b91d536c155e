"""Switches and volumes in an in-process cluster: agents make (in-memory) bridges and check
volumes (real tmp dirs), report them in their node records, and VMs only land where what
they need is."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from hvcluster.models.base import decode, encode
from hvcluster.models.lifecycle import MigrationState, VMState
from hvcluster.models.node import Node
from hvcluster.models.storage import Switch, SwitchType, Volume
from tests.sim.cluster import SimCluster
from tests.sim.moves import move, wait_state

pytestmark = pytest.mark.timeout(60)
NIC = {"switch": "lan", "mac": "52:54:00:00:00:01"}


async def node(cluster: SimCluster, name: str) -> Node:
    kv = await cluster.store.get(cluster.keys.node(name))
    assert kv is not None
    return decode(Node, kv.key, kv.value)


async def failed_with(cluster: SimCluster, vm: str, words: str) -> bool:
    s = await cluster.status(vm)
    return s is not None and s.state is VMState.FAILED and words in s.last_error


async def test_a_vm_needing_a_switch_lands_only_where_the_switch_is(
    cluster: SimCluster,
) -> None:
    lan = Switch(name="lan", type=SwitchType.EXTERNAL, uplink="eth1")
    await cluster.store.put(cluster.keys.switch("lan"), encode(lan))
    await cluster.start("n1", "n2")
    await cluster.start_node("n3", nics=("eth1",))  # the only host wired to that network

    async def reported() -> bool:
        return (await node(cluster, "n3")).switches == ("lan",)

    await cluster.wait_for(reported, 10, "n3 to report switch lan")
    n1 = await node(cluster, "n1")
    assert n1.switches == () and "eth1 is not present" in n1.switch_problems["lan"]
    assert cluster.links["n3"].links["eth1"].master == "hvc-lan"
    await cluster.create_vm("web", nics=[NIC], ha={"preferred_owners": ["n1", "n2"]})
    assert await cluster.wait_running("web") == "n3"
    # its host dies: nowhere else has the switch, so it is not recovered, and says why
    await cluster.crash("n3")
    await cluster.wait_for(
        lambda: failed_with(cluster, "web", "lacks switch 'lan'"), 20, "web left failed"
    )
    assert await cluster.running_on("web") is None


async def test_a_vm_needing_a_volume_no_node_sees_stays_unplaced_with_the_reason(
    cluster: SimCluster, tmp_path: Path
) -> None:
    csv = tmp_path / "csv1"
    await cluster.add_volume("csv1", csv)
    unseen = Volume(name="csv2", path=str(tmp_path / "not-mounted"), id=uuid.uuid4().hex)
    await cluster.store.put(cluster.keys.volume(unseen.name), encode(unseen))
    await cluster.start("n1", "n2")

    async def reported() -> bool:
        return [(await node(cluster, n)).volumes for n in ("n1", "n2")] == [("csv1",)] * 2

    await cluster.wait_for(reported, 10, "both nodes to report csv1")
    n1 = await node(cluster, "n1")
    assert n1.volume_free_mib["csv1"] > 0 and "not a directory" in n1.volume_problems["csv2"]
    await cluster.create_vm("db", disks=[{"volume": "csv1", "path": "db.qcow2"}])
    host = await cluster.wait_running("db")
    assert cluster.drivers[host].host.volumes == {"csv1": csv}
    lock = cluster.keys.lock("disk:csv1:db.qcow2")
    kv = await cluster.store.get(lock)
    assert kv is not None and kv.value == f"{host} db".encode() and kv.lease > 0
    await cluster.store.delete(cluster.keys.vm("db"))  # as the API does: its agent stops it

    async def released() -> bool:
        return await cluster.store.get(lock) is None

    await cluster.wait_for(released, 10, "the disk lock of db given back")
    await cluster.create_vm("lost", disks=[{"volume": "csv2", "path": "lost.qcow2"}])
    await cluster.wait_for(
        lambda: failed_with(cluster, "lost", "lacks volume 'csv2'"), 10, "lost left failed"
    )
    assert await cluster.placement("lost") is None
    status = await cluster.status("lost")
    assert status is not None and "not a directory" in status.last_error


async def test_migration_to_a_node_lacking_the_switch_is_refused_with_the_reason(
    cluster: SimCluster,
) -> None:
    lan = Switch(name="lan", type=SwitchType.EXTERNAL, uplink="eth1")
    await cluster.store.put(cluster.keys.switch("lan"), encode(lan))
    await cluster.start_node("n1", nics=("eth1",))
    await cluster.start_node("n2")

    async def reported() -> bool:
        return (await node(cluster, "n1")).switches == ("lan",)

    await cluster.wait_for(reported, 10, "n1 to report switch lan")
    await cluster.create_vm("web", nics=[NIC])
    assert await cluster.wait_running("web") == "n1"
    rec = await move(cluster, "web", "n2")
    done = await wait_state(cluster, rec.id, MigrationState.DONE, MigrationState.FAILED)
    assert done.state is MigrationState.FAILED
    assert "n2 lacks switch 'lan' (uplink eth1 is not present on this host)" in done.reason
    assert await cluster.running_on("web") == "n1"
