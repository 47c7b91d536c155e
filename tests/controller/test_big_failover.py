"""A node with 125 VMs dies: the controller places them elsewhere in a few transactions
(not one each) and says their waits as one event (not 125), every decision still said."""

from __future__ import annotations

from hvcluster.controller.loop import Controller
from hvcluster.models.base import encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.lifecycle import VMState
from hvcluster.models.node import Capacity, Node, NodeAlive
from hvcluster.models.vm import Placement, VMSpec, VMStatus
from hvcluster.store.clock import ManualClock
from hvcluster.store.keys import Keys
from tests.counting import CountingStore

KEYS = Keys("big")
VMS = 125


async def cluster(store: CountingStore) -> dict[str, int]:
    await store.put(KEYS.config, encode(ClusterConfig(name="big")))
    leases = {}
    for name in ("n0", "n1", "n2", "n3"):
        node = Node(name=name, address="127.0.0.1", capacity=Capacity(cpus=512, memory_mib=1 << 20))
        await store.put(KEYS.node(name), encode(node))
        lease = await store.grant(30)
        leases[name] = lease.id
        alive = NodeAlive(node=name, lease=lease.id, since=0.0)
        await store.put(KEYS.alive(name), encode(alive), lease=lease.id)
    for i in range(VMS):
        vm = VMSpec(name=f"vm{i:03}", memory_mib=128)
        await store.put(KEYS.vm(vm.name), encode(vm))
        await store.put(KEYS.placement(vm.name), encode(Placement(node="n0", epoch=1, uid=vm.uid)))
        status = VMStatus(
            vm=vm.name, node="n0", epoch=1, state=VMState.RUNNING, since=0.0, uid=vm.uid
        )
        await store.put(KEYS.status(vm.name), encode(status))
    return leases


async def test_125_vms_of_a_dead_node_placed_in_few_txns_their_waits_in_one_event() -> None:
    clock = ManualClock()
    store = CountingStore(clock)
    leases = await cluster(store)
    said: list[tuple[str, str, str]] = []

    async def say(kind: str, subject: str, reason: str) -> None:
        said.append((kind, subject, reason))

    controller = Controller(store, KEYS, "n1", say, is_leader=lambda: True, clock=clock.wall)
    await controller.cycle()
    await store.revoke(leases["n0"])
    said.clear()
    await controller.cycle()  # n0 gone, not yet safe to reclaim: its VMs wait
    waits = [s for s in said if s[0] == "controller.waiting"]
    assert len(waits) == 2, waits  # the node's, and one for its 125 VMs
    assert waits[1][1] == "node/n0" and waits[1][2].startswith("125 VMs stay put for now (vm000,")
    assert "and 115 more" in waits[1][2]

    said.clear()
    await clock.advance(10)  # past fence_after + margin, within the others' leases
    store.txns = 0
    await controller.cycle()
    recovered = [s for s in said if s[0] == "vm.recovered"]
    assert len(recovered) == VMS, "every decision said, each with its reason"
    assert store.txns <= 4, f"{store.txns} txns"  # node.dead, and 125 placements in 2
    for i in range(VMS):
        kv = await store.get(KEYS.placement(f"vm{i:03}"))
        assert kv is not None
        placed = Placement.model_validate_json(kv.value)
        assert placed.node != "n0" and placed.epoch == 2
    said.clear()
    await controller.cycle()
    assert not [s for s in said if s[0] in ("vm.recovered", "controller.waiting")]
