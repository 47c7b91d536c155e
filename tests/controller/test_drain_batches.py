"""A drain step's moves are created in a few transactions, not one each, with the same
refusals as one by one: a VM another job holds waits, said with the job that holds it."""

from __future__ import annotations

import time

from hvcluster.controller.migrations import MigrationCoordinator
from hvcluster.controller.notes import ControllerNotes
from hvcluster.models.base import decode, encode
from hvcluster.models.checkpoint import CheckpointAction
from hvcluster.models.config import ClusterConfig, MigrationSettings
from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.models.node import Capacity, Node, NodeAlive
from hvcluster.store.checkpoints import create_op
from hvcluster.store.keys import Keys
from tests.controller.test_big_failover import vms_running_on_n0
from tests.counting import CountingStore

KEYS = Keys("drain")
VMS = 100


async def cluster(store: CountingStore, vms: int) -> None:
    """n0 draining with ``vms`` running VMs, n1 and n2 with room for all; no limit on
    parallel moves that a drain step would hit."""
    many = MigrationSettings(max_parallel_per_node=1000)
    await store.put(KEYS.config, encode(ClusterConfig(name="drain", migration=many)))
    for name in ("n0", "n1", "n2"):
        state = NodeAdminState.DRAINING if name == "n0" else NodeAdminState.UP
        node = Node(
            name=name, address="127.0.0.1", admin_state=state,
            capacity=Capacity(cpus=512, memory_mib=1 << 20),
        )  # fmt: skip
        await store.put(KEYS.node(name), encode(node))
        lease = await store.grant(30)
        alive = NodeAlive(node=name, lease=lease.id, since=time.time())
        await store.put(KEYS.alive(name), encode(alive), lease=lease.id)
    await vms_running_on_n0(store, KEYS, vms)


def coordinator(store: CountingStore, said: list[tuple[str, str, str]]) -> MigrationCoordinator:
    async def say(kind: str, subject: str, reason: str) -> None:
        said.append((kind, subject, reason))

    return MigrationCoordinator(store, KEYS, say, ControllerNotes(started=0.0), lambda: True)


async def drains(store: CountingStore) -> list[Migration]:
    found = await store.range(KEYS.prefix("migrations"))
    return [decode(Migration, kv.key, kv.value) for kv in found.kvs]


async def test_a_drain_of_100_vms_creates_its_moves_in_few_txns() -> None:
    store = CountingStore()
    await cluster(store, VMS)
    said: list[tuple[str, str, str]] = []
    store.txns = 0
    await coordinator(store, said).cycle()
    records = await drains(store)
    assert len(records) == VMS
    assert {r.requested_by for r in records} == {"drain:n0"}
    assert {r.kind for r in records} == {MigrationKind.LIVE}
    assert {r.epoch for r in records} == {1}
    moves = [s for s in said if s[0] == "drain.move"]
    assert len(moves) == VMS, "every move said, with its reason"
    assert all(s[2].endswith(")") and "n0" in s[2] for s in moves)
    # 2 compares and 2 writes a move: 60 to a transaction (one by one it was 100)
    assert store.txns <= 3, f"{store.txns} txns for {VMS} moves"
    for r in records:
        assert await store.get(KEYS.job(r.vm)) is not None, "each move holds its VM's job key"


async def test_a_vm_another_job_holds_waits_the_others_move() -> None:
    store = CountingStore()
    await cluster(store, 5)
    held = await create_op(store, KEYS, "vm002", "n0", 1, CheckpointAction.CREATE, "before", "test")
    assert held is not None
    said: list[tuple[str, str, str]] = []
    await coordinator(store, said).cycle()
    assert sorted(r.vm for r in await drains(store)) == ["vm000", "vm001", "vm003", "vm004"]
    waits = [s for s in said if s[0] == "drain.wait"]
    assert waits == [
        (
            "drain.wait",
            "vm/vm002",
            f"vm vm002 is busy with checkpoint create 'before' ({held.id}, requested); drain waits",
        )
    ]
    assert [s[1] for s in said if s[0] == "drain.move"] == [
        "vm/vm000", "vm/vm001", "vm/vm003", "vm/vm004"
    ]  # fmt: skip
