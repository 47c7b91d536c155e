"""A node running more VMs than etcd allows compares in a txn (128) registers, and
re-registers after losing its lease, killing only the VMs moved while it was away."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hvcluster.agent.liveness import NodeLiveness
from hvcluster.models.base import encode
from hvcluster.models.vm import Placement
from hvcluster.store.base import Put
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from hvcluster.watchdog.node import WatchdogFeeder
from tests.agent.test_liveness import CONFIG, RecordingFeeder
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(30)

KEYS = Keys("t")
VMS = 300


async def place(store: MemoryStore) -> dict[str, int]:
    for start in range(0, VMS, 100):
        ops = [
            Put(KEYS.placement(f"vm{i:03}"), encode(Placement(node="n1", epoch=1)))
            for i in range(start, start + 100)
        ]
        await store.txn([], ops)
    found = await store.range(KEYS.prefix("placements"))
    return {KEYS.name_of(kv.key, "placements"): kv.mod_revision for kv in found.kvs}


async def test_a_node_with_300_vms_re_registers_killing_only_the_moved_one(
    tmp_path: Path,
) -> None:
    store = MemoryStore()
    local = await place(store)
    killed: list[set[str]] = []

    async def kill(names: set[str]) -> None:
        killed.append(names)
        for name in names:
            local.pop(name, None)

    async def say(kind: str, reason: str) -> None:
        return None

    feeder: WatchdogFeeder = RecordingFeeder(tmp_path)
    live = NodeLiveness(store, KEYS, "n1", CONFIG, feeder, lambda: dict(local), kill, say)
    await live.register()
    first = live.lease_id
    assert await store.get(KEYS.alive("n1")) is not None

    await store.revoke(first)  # the node was away; meanwhile the controller moved vm123
    await store.put(KEYS.placement("vm123"), encode(Placement(node="n2", epoch=2)))
    task = asyncio.create_task(live.run())
    try:

        async def registered_again() -> bool:
            return live.lease_id != first and await store.get(KEYS.alive("n1")) is not None

        await wait_for(registered_again, 10, "registered again")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
    assert killed == [{"vm123"}]
    assert len(local) == VMS - 1
