"""A daemon stopped while it stops (cancelled again, as ``cancel_all`` does every half
second) still stops its liveness: a liveness left running would keep renewing the lease of
an agent that is gone, and its VMs would never be recovered elsewhere."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.sim.cluster import SimCluster


@pytest.mark.parametrize("yields", [0, 1, 3, 8, 21])
async def test_a_daemon_cancelled_again_while_stopping_ends_its_liveness(
    tmp_path: Path, yields: int
) -> None:
    cluster = SimCluster(tmp_path)
    try:
        await cluster.start("n1")
        daemon, task = cluster.daemons["n1"], cluster.tasks.pop("n1")
        task.cancel()
        for _ in range(yields):
            await asyncio.sleep(0)  # the daemon is now somewhere in its shutdown
        task.cancel()
        await asyncio.wait([task], timeout=10)
        assert task.done()
        live = daemon.live
        assert live is not None
        for _ in range(100):  # whatever is still pending runs to its end
            await asyncio.sleep(0.01)
        assert live.ended(), "the liveness of a stopped daemon still runs (renewing its lease)"
    finally:
        await cluster.stop()
