"""``hvc node resume --failback none|policy|immediate`` end to end: CLI -> real API server ->
the node record the scheduler reads (``failback_held``) and the event."""

from __future__ import annotations

import time
from typing import Any

import pytest

from hvcluster.models.base import decode, encode
from hvcluster.models.event import Event
from hvcluster.models.lifecycle import VMState
from hvcluster.models.node import Node, NodeAlive
from hvcluster.models.vm import Placement, VMSpec, VMStatus
from tests.cli.conftest import KEYS, ApiServer

pytestmark = pytest.mark.timeout(60)


def setup(server: ApiServer) -> None:
    """r1 paused; ``home`` prefers r1 and runs on r2 (epoch 4); ``other`` prefers nobody."""
    store = server.store
    assert store is not None

    async def write() -> None:
        for name in ("r1", "r2"):
            lease = await store.grant(60)
            beat = NodeAlive(node=name, lease=lease.id, since=time.time())
            await store.put(KEYS.alive(name), encode(beat), lease=lease.id)
        for vm, preferred in (("home", ["r1"]), ("other", [])):
            spec = VMSpec.model_validate(
                {
                    "name": vm,
                    "ha": {"preferred_owners": preferred, "failback": {"mode": "immediate"}},
                }
            )
            await store.put(KEYS.vm(vm), encode(spec))
            await store.put(KEYS.placement(vm), encode(Placement(node="r2", epoch=4)))
            status = VMStatus(vm=vm, node="r2", epoch=4, state=VMState.RUNNING, since=1.0)
            await store.put(KEYS.status(vm), encode(status))

    server.add_node("r1")
    server.add_node("r2")
    server.run(write())


def record(server: ApiServer) -> Node:
    assert server.store is not None
    kv = server.run(server.store.get(KEYS.node("r1")))
    assert kv is not None
    return decode(Node, kv.key, kv.value)


def last_resumed(server: ApiServer) -> Event:
    assert server.store is not None
    kvs = server.run(server.store.range(KEYS.prefix("events"))).kvs
    events = [decode(Event, kv.key, kv.value) for kv in kvs if kv.value.startswith(b"{")]
    return [e for e in events if e.kind == "node.resumed" and e.subject == "node/r1"][-1]


def test_resume_failback_none_then_policy(server: ApiServer, hvc: Any) -> None:
    setup(server)
    assert hvc("node", "pause", "r1").exit_code == 0
    r = hvc("node", "resume", "r1", "--failback", "none", "--reason", "disks swapped")
    assert r.exit_code == 0, r.output
    assert "up" in r.output and "failback none" in r.output
    # Held: the VM away from r1 that prefers it, at the epoch it has now; not the other.
    assert record(server).failback_held == {"home": 4}
    event = last_resumed(server)
    assert event.reason.startswith("disks swapped; failback none: 1 VM(s) away from it")
    assert "(home)" in event.reason and event.data["failback_held"] == "home"

    assert hvc("node", "pause", "r1").exit_code == 0
    r = hvc("node", "resume", "r1", "--failback", "policy")
    assert r.exit_code == 0, r.output
    assert record(server).failback_held == {}  # each VM's own policy decides again
    assert last_resumed(server).reason.endswith("; failback policy")


def test_resume_rejects_an_unknown_failback(server: ApiServer, hvc: Any) -> None:
    r = hvc("node", "resume", "r1", "--failback", "sometimes")
    assert r.exit_code != 0 and "--failback must be none, immediate or policy" in r.output
