"""Quick migration saves the guest's state on a volume both nodes see, and the target checks
it can read it before the placement flips: a state the target cannot read fails the move and
the VM runs on its source again (never a cold boot on the target); with no volume shared,
the move is refused with the reason."""

from __future__ import annotations

import pytest

from hvcluster.models.lifecycle import MigrationState
from hvcluster.models.migration import MigrationKind
from tests.sim.cluster import SimCluster
from tests.sim.moves import move, record, wait_state

pytestmark = pytest.mark.timeout(60)
_M = MigrationState
QUICK = MigrationKind.QUICK


async def test_the_state_goes_to_the_vms_own_disk_volume(cluster: SimCluster) -> None:
    for name in ("a", "b"):
        await cluster.add_volume(name)
    await cluster.start("n1", "n2")
    await cluster.create_vm(
        "db", ha={"preferred_owners": ["n1"]}, disks=[{"volume": "b", "path": "db.qcow2"}]
    )
    assert await cluster.wait_running("db") == "n1"
    rec = await move(cluster, "db", "n2", QUICK)
    done = await wait_state(cluster, rec.id, _M.DONE, _M.FAILED)
    assert done.state is _M.DONE, done.reason
    assert done.saved_path == f"b:.hvc-migration-state/db-{rec.id}.state"
    assert done.state_verified
    assert await cluster.wait_running("db", not_on="n1") == "n2"
    [restored] = [t for t in cluster.drivers["n2"].trace if t[1] == "db" and t[2] == "running"]
    assert "restored from" in restored[3], "restored from its state, not booted cold"


async def test_a_state_the_target_cannot_read_fails_the_move_and_the_source_runs_it(
    cluster: SimCluster,
) -> None:
    await cluster.add_volume("csv")
    await cluster.start("n1", "n2")
    await cluster.create_vm("app", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("app") == "n1"
    epoch = (await cluster.placement("app")).epoch  # type: ignore[union-attr]
    cluster.drivers["n1"].save_unshared("app")  # saved where n2 does not look
    rec = await move(cluster, "app", "n2", QUICK)
    failed = await wait_state(cluster, rec.id, _M.FAILED, _M.DONE)
    assert failed.state is _M.FAILED
    assert failed.reason.startswith(
        f"target n2 cannot read the saved state csv:.hvc-migration-state/app-{rec.id}.state"
    )
    placement = await cluster.placement("app")
    assert placement is not None and (placement.node, placement.epoch) == ("n1", epoch)
    assert await cluster.wait_running("app", 10) == "n1", "the source ran its copy again"

    async def resumed() -> bool:
        return bool(await cluster.event_list("migration.resumed_source", "vm/app"))

    await cluster.wait_for(resumed, 10, "the source's resume said")
    [said] = await cluster.event_list("migration.failed", "vm/app")
    assert "cannot read the saved state" in said.reason

    async def stays_on_n1() -> None:  # and it stays there: nothing started on n2
        assert await cluster.running_on("app") == "n1"

    await cluster.worker_cycles("n2", meanwhile=stays_on_n1)

    again = await move(cluster, "app", "n2", QUICK)
    done = await wait_state(cluster, again.id, _M.DONE, _M.FAILED)
    assert done.state is _M.DONE, done.reason
    assert await cluster.wait_running("app", not_on="n1") == "n2"


async def test_no_volume_both_nodes_see_no_quick_migration(cluster: SimCluster) -> None:
    """A request stored behind the API's back (or a volume gone since): the controller
    refuses it with the reason, and the VM never leaves its node."""
    await cluster.start("n1", "n2")
    await cluster.create_vm("app", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("app") == "n1"
    rec = await move(cluster, "app", "n2", QUICK)
    failed = await wait_state(cluster, rec.id, _M.FAILED, _M.DONE)
    assert "n1 and n2 share no volume to save the VM's state on" in failed.reason
    assert not (await record(cluster, rec.id)).saved_path
    assert await cluster.running_on("app") == "n1"
    [said] = await cluster.event_list("migration.failed", "vm/app")
    assert "share no volume" in said.reason
