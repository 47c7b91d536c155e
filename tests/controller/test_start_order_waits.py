"""VMs held back by their start groups: a few are said one by one, many as one event naming
how many, the first of them and the shared reason (each decision keeps its own reason:
tests/scheduler/test_startorder.py)."""

from __future__ import annotations

import time

from hvcluster.controller.loop import Controller
from hvcluster.models.base import encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.node import Capacity, Node, NodeAlive
from hvcluster.models.vm import HAPolicy, VMSpec
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore

KEYS = Keys("order")


async def cluster(store: MemoryStore, apps: int) -> None:
    """One node; a db VM (group ``db``), and ``apps`` VMs that start after it."""
    await store.put(KEYS.config, encode(ClusterConfig(name="order")))
    node = Node(name="n1", address="127.0.0.1", capacity=Capacity(cpus=512, memory_mib=1 << 20))
    await store.put(KEYS.node("n1"), encode(node))
    lease = await store.grant(30)
    alive = NodeAlive(node="n1", lease=lease.id, since=time.time())
    await store.put(KEYS.alive("n1"), encode(alive), lease=lease.id)
    db = VMSpec(name="db", memory_mib=128, ha=HAPolicy(start_group="db"))
    await store.put(KEYS.vm("db"), encode(db))
    for i in range(apps):
        app = VMSpec(name=f"app{i:02}", memory_mib=128, ha=HAPolicy(start_after=("db",)))
        await store.put(KEYS.vm(app.name), encode(app))


async def first_cycle(apps: int) -> tuple[list[tuple[str, str, str]], Controller]:
    store = MemoryStore()
    await cluster(store, apps)
    said: list[tuple[str, str, str]] = []

    async def say(kind: str, subject: str, reason: str) -> None:
        said.append((kind, subject, reason))

    controller = Controller(store, KEYS, "n1", say, is_leader=lambda: True)
    await controller.cycle()  # db placed; the apps wait for it to run
    return said, controller


async def test_twenty_vms_waiting_for_a_start_group_are_one_event() -> None:
    said, controller = await first_cycle(20)
    waits = [s for s in said if s[0] == "controller.waiting"]
    assert len(waits) == 1, waits
    _, subject, reason = waits[0]
    assert subject == "group/db"
    assert reason.startswith("20 VMs wait to start (app00, app01,"), reason
    assert "and 10 more): start group(s) db (0/1 running) not running yet" in reason
    assert "start_group_delay_s 30s after it became startable" in reason
    assert [s[1] for s in said if s[0] == "vm.placed"] == ["vm/db"]
    await controller.cycle()
    assert len([s for s in said if s[0] == "controller.waiting"]) == 1, "said once, not per cycle"


async def test_a_few_vms_waiting_are_said_one_by_one() -> None:
    said, _ = await first_cycle(3)
    waits = [s for s in said if s[0] == "controller.waiting"]
    assert [s[1] for s in waits] == ["vm/app00", "vm/app01", "vm/app02"]
    assert waits[0][2].startswith("app00 waits for start group(s) db (0/1 running) to be running")
