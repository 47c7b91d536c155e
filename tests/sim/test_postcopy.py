"""Postcopy in an in-process cluster: the placement flips when the guest switches to the
target (before the rest of its memory is there), and a failure after that loses the memory
of both copies: the source never resumes, the failure is an event saying so, and the VM
starts again from its disk (never two copies running)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hvcluster.models.config import MigrationSettings
from hvcluster.models.event import Event
from hvcluster.models.lifecycle import MigrationState, VMState
from tests.sim.cluster import FAST, SimCluster
from tests.sim.moves import move, record, wait_state

pytestmark = pytest.mark.timeout(60)
_M = MigrationState

# 256 MiB at 64 MiB/s with the sim's dirty rate: several passes, so postcopy starts after
# the first (QEMU's own order: precopy first, postcopy when it has not converged)
POSTCOPY = FAST.model_copy(
    update={
        "migration": MigrationSettings(
            max_bandwidth_mib_s=64, auto_converge=False, postcopy=True, postcopy_after_passes=1
        )
    }
)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[SimCluster]:
    """Two nodes with postcopy on, and VM ``big`` running on n1."""
    cluster = SimCluster(tmp_path, POSTCOPY)
    try:
        await cluster.start("n1", "n2")
        await cluster.create_vm("big", ha={"preferred_owners": ["n1"]})
        assert await cluster.wait_running("big") == "n1"
        yield cluster
    finally:
        await cluster.stop()


async def test_postcopy_flips_at_the_switch_and_the_guest_runs_on(cluster: SimCluster) -> None:
    rec = await move(cluster, "big", "n2")
    done = await wait_state(cluster, rec.id, _M.DONE, _M.FAILED)
    assert done.state is _M.DONE, done.reason
    assert await cluster.wait_running("big", not_on="n1") == "n2"

    async def finished() -> bool:  # the source sent the rest and let go of its copy
        got = await record(cluster, rec.id)
        return got.progress.postcopy and got.transfer_ms is not None

    await cluster.wait_for(finished, 20, "the postcopy transfer's end recorded")
    assert await cluster.running_on("big") == "n2"
    assert not await cluster.event_list("migration.postcopy_failed")


async def test_a_failure_in_postcopy_restarts_the_vm_from_its_disk(cluster: SimCluster) -> None:
    cluster.drivers["n1"].fail_next_migration("big", "link cut", in_postcopy=True)
    rec = await move(cluster, "big", "n2")
    await wait_state(cluster, rec.id, _M.DONE, _M.FAILED)

    async def said() -> list[Event]:
        return await cluster.event_list("migration.postcopy_failed", "vm/big")

    (lost,) = await cluster.wait_for(said, 20, "the postcopy failure's event")
    assert "link cut" in lost.reason and "from its disk" in lost.reason
    # the source's copy is gone for good: it is never resumed
    source = {vm.name: vm for vm in await cluster.drivers["n1"].list()}
    assert "big" not in source or source["big"].state is VMState.FAILED

    async def started_again() -> list[Event]:  # from its disk: a start after the loss
        kinds = ("vm.started", "vm.restarted")
        events = [e for e in await cluster.event_list(subject="vm/big") if e.kind in kinds]
        return [e for e in events if e.time >= lost.time]

    (again, *_) = await cluster.wait_for(started_again, 30, "big started again")
    node = await cluster.running_on("big")
    assert node is not None and f"on {node}" in again.reason, again
    status = await cluster.status("big")
    assert status is not None and status.state is VMState.RUNNING
