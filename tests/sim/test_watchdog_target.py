"""A node whose watchdog does not acknowledge feeding receives no VM by migration either (no
process would kill it were the node cut off): an explicit live move there fails with the
reason, and the VM keeps running where it was."""

from __future__ import annotations

from pathlib import Path

from hvcluster.models.lifecycle import MigrationState
from hvcluster.watchdog.node import MemoryWatchdog
from tests.sim.cluster import SimCluster, node_record
from tests.sim.moves import move, record


async def test_no_vm_migrates_to_a_node_whose_watchdog_is_silent(tmp_path: Path) -> None:
    cluster = SimCluster(tmp_path)
    try:
        await cluster.start("n1", "n2")
        await cluster.create_vm("web", ha={"preferred_owners": ["n1"]})
        assert await cluster.wait_running("web") == "n1"
        watchdog = cluster.daemons["n2"].watchdog
        assert isinstance(watchdog, MemoryWatchdog)
        watchdog.running = False

        async def silent() -> bool:
            node = await node_record(cluster, "n2")
            return bool(node.watchdog and not node.watchdog.acknowledging)

        await cluster.wait_for(silent, 20, "n2 to say its watchdog does not answer")
        rec = await move(cluster, "web", to="n2")

        async def ended() -> bool:
            return (await record(cluster, rec.id)).state in (
                MigrationState.FAILED,
                MigrationState.CANCELLED,
            )

        await cluster.wait_for(ended, 30, "the move to n2 to be refused")
        failed = await record(cluster, rec.id)
        assert "watchdog" in failed.reason, failed.reason
        assert await cluster.running_on("web") == "n1"
        assert await cluster.drivers["n2"].list() == []
    finally:
        await cluster.stop()
