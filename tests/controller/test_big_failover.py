"""A node with 125 VMs dies: the controller places them elsewhere in a few transactions
(not one each) and says their waits as one event (not 125), every decision still said."""

from __future__ import annotations

from collections.abc import Sequence

from hvcluster.controller.loop import Controller
from hvcluster.models.base import encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.event import Event
from hvcluster.models.lifecycle import VMState
from hvcluster.models.node import Capacity, Node, NodeAlive
from hvcluster.models.vm import Placement, VMSpec, VMStatus
from hvcluster.store.base import Store
from hvcluster.store.clock import ManualClock
from hvcluster.store.events import EventLog
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
    await vms_running_on_n0(store, KEYS, VMS)
    return leases


async def vms_running_on_n0(store: Store, keys: Keys, count: int) -> None:
    """``count`` VMs (vm000, ...; 128 MiB each) placed on n0 and reported running there."""
    for i in range(count):
        vm = VMSpec(name=f"vm{i:03}", memory_mib=128)
        await store.put(keys.vm(vm.name), encode(vm))
        await store.put(keys.placement(vm.name), encode(Placement(node="n0", epoch=1, uid=vm.uid)))
        status = VMStatus(
            vm=vm.name, node="n0", epoch=1, state=VMState.RUNNING, since=0.0, uid=vm.uid
        )
        await store.put(keys.status(vm.name), encode(status))


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


async def test_a_cycles_events_are_appended_together_in_the_plans_order() -> None:
    """The controller says a cycle's events through ``say_all``: 125 recoveries are 2
    appends to the event log, not 125, in the order they were decided."""
    clock = ManualClock()
    store = CountingStore(clock)
    leases = await cluster(store)
    log = EventLog(store, KEYS)

    def event(said: tuple[str, str, str]) -> Event:
        return Event(time=clock.wall(), kind=said[0], subject=said[1], reason=said[2])

    async def say(kind: str, subject: str, reason: str) -> None:
        await log.append(event((kind, subject, reason)))

    async def say_all(said: Sequence[tuple[str, str, str]]) -> None:
        await log.append_all([event(s) for s in said])

    controller = Controller(
        store, KEYS, "n1", say, is_leader=lambda: True, clock=clock.wall, say_all=say_all
    )
    await controller.cycle()
    await store.revoke(leases["n0"])
    await controller.cycle()
    await clock.advance(10)
    before, store.txns = await log.last_seq(), 0
    await controller.cycle()
    assert store.txns <= 4 + 3, f"{store.txns} txns"  # + node.dead alone, 125 events in 2
    said = [e.event for e in await log.recent(1000) if e.seq > before]
    assert [(e.kind, e.subject) for e in said] == [("node.dead", "node/n0")] + [
        ("vm.recovered", f"vm/vm{i:03}") for i in range(VMS)
    ]
    assert all(e.reason.startswith(f"recover {e.subject[3:]} from n0 to ") for e in said[1:])
