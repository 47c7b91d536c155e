"""A daemon stopped while it stops (cancelled again, as ``cancel_all`` does every half
second) still stops its liveness: a liveness left running would keep renewing the lease of
an agent that is gone, and its VMs would never be recovered elsewhere."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.sim.cluster import SimCluster
from tests.waiting import wait_for


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
        # whatever is still pending runs to its end
        await wait_for(live.ended, 2, "the liveness of the stopped daemon to end")
    finally:
        await cluster.stop()
