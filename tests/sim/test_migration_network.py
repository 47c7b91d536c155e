"""The migration network and a migration's bandwidth cap, in an in-process cluster: the cap
goes from the API request through the record to the source's driver, and a source sends
to the target's registered migration address (not its API address) when it has one."""

from __future__ import annotations

import pytest

from hvcluster.models.base import encode
from hvcluster.models.lifecycle import MigrationState
from tests.sim.cluster import SimCluster, node_record, with_api
from tests.sim.moves import move, wait_state

pytestmark = pytest.mark.timeout(60)
_M = MigrationState


async def test_a_cap_asked_for_slows_the_transfer_to_it(cluster: SimCluster) -> None:
    """256 MiB at 32 MiB/s: the sim driver's transfer takes 8 s (of the manual clock), where
    the cluster's own cap (10 000 MiB/s) would take milliseconds."""
    await cluster.start("n1", "n2")
    await cluster.create_vm("web", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("web") == "n1"
    async with with_api(cluster) as api:
        r = await api.post("/vms/web/move", json={"to": "n2", "max_bandwidth_mib_s": 32})
        assert r.status_code == 202, r.text
        done = await wait_state(cluster, r.json()["id"], _M.DONE, _M.FAILED, timeout=30)
        assert done.state is _M.DONE, done.reason
        assert done.max_bandwidth_mib_s == 32
        assert done.transfer_ms is not None and done.transfer_ms >= 256 / 32 * 1000
        shown = (await api.get(f"/migrations/{done.id}")).json()
        assert shown["max_bandwidth_mib_s"] == 32


async def test_the_source_sends_to_the_targets_migration_address(cluster: SimCluster) -> None:
    """n2's record names a migration address (as its agent's ``migration_address`` does)
    and n2 listens there: the move goes. A listener on n2's API address instead would be
    refused (the previous test of test_worker_faults: only the registered one)."""
    await cluster.start("n1", "n2")
    await cluster.create_vm("app", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("app") == "n1"
    n2 = (await node_record(cluster, "n2")).model_copy(update={"migration_address": "127.0.0.2"})
    await cluster.store.put(cluster.keys.node("n2"), encode(n2))
    cluster.drivers["n2"].listen_elsewhere("app", "127.0.0.2")
    rec = await move(cluster, "app", "n2")
    done = await wait_state(cluster, rec.id, _M.DONE, _M.FAILED)
    assert done.state is _M.DONE, done.reason
    assert done.target_address.startswith("tcp:127.0.0.2:")
    assert await cluster.wait_running("app", not_on="n1") == "n2"

    # back to n1, whose migration address is its API address (none set): a listener on
    # another address of n1 is refused, naming the one registered
    cluster.drivers["n1"].listen_elsewhere("app", "127.0.0.3")
    back = await move(cluster, "app", "n1")
    failed = await wait_state(cluster, back.id, _M.FAILED, _M.DONE)
    assert "127.0.0.3 is not n1's registered migration address 127.0.0.1" in failed.reason
