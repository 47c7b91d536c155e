"""``hvc vm move``, ``hvc migration`` and ``hvc node drain`` against a real API server."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from hvcluster.models.base import decode, encode
from hvcluster.models.lifecycle import MigrationState, VMState
from hvcluster.models.node import Node, NodeAlive
from hvcluster.models.vm import Placement, VMSpec, VMStatus
from hvcluster.store.migrations import change_migration, read_migrations
from tests.cli.conftest import KEYS, ApiServer

pytestmark = pytest.mark.timeout(60)


def cluster(server: ApiServer, *vms: str) -> None:
    store = server.store
    assert store is not None

    async def setup() -> None:
        for name in ("m1", "m2"):
            lease = await store.grant(60)
            beat = NodeAlive(node=name, lease=lease.id, since=time.time())
            await store.put(KEYS.alive(name), encode(beat), lease=lease.id)
        for vm in vms:
            await store.put(KEYS.vm(vm), encode(VMSpec(name=vm, memory_mib=128)))
            await store.put(KEYS.placement(vm), encode(Placement(node="m1", epoch=1)))
            status = VMStatus(vm=vm, node="m1", epoch=1, state=VMState.RUNNING, since=1.0)
            await store.put(KEYS.status(vm), encode(status))

    server.add_node("m1")
    server.add_node("m2")
    server.run(setup())
    server.run(sharing_a_volume(store, "m1", "m2"))  # where a quick move saves the state


async def sharing_a_volume(store: Any, *nodes: str) -> None:
    for name in nodes:
        kv = await store.get(KEYS.node(name))
        node = decode(Node, kv.key, kv.value).model_copy(update={"volumes": ("csv",)})
        await store.put(KEYS.node(name), encode(node))


def fail_soon(server: ApiServer, vm: str, reason: str) -> threading.Thread:
    """As the cluster would: fail the VM's migration once it is stored."""
    store = server.store
    assert store is not None

    async def fail() -> bool:
        for stored in (await read_migrations(store, KEYS)).items.values():
            if stored.value.vm == vm:
                done = await change_migration(
                    store,
                    KEYS,
                    stored.value.id,
                    lambda m: m.model_copy(
                        update={"state": MigrationState.FAILED, "reason": reason}
                    ),
                )
                return done is not None
        return False

    def run() -> None:
        for _ in range(100):
            if server.run(fail()):
                return
            time.sleep(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_move_requests_and_wait_fails_with_the_reason(server: ApiServer, hvc: Any) -> None:
    cluster(server, "web", "db")
    r = hvc("vm", "move", "web", "--to", "m2")
    assert r.exit_code == 0, r.output
    assert "of web (live, m1 -> m2): requested" in r.output
    again = hvc("vm", "move", "web")
    assert again.exit_code != 0 and "already moving" in again.output
    listed = hvc("migration", "list")
    assert listed.exit_code == 0 and "web" in listed.output

    thread = fail_soon(server, "db", "target exploded")
    r = hvc("vm", "move", "db", "--quick", "--wait", "--timeout", "20")
    thread.join(timeout=10)
    assert r.exit_code == 1, r.output
    assert "failed: target exploded" in r.output
    assert hvc("vm", "move", "db", "--live", "--quick").exit_code != 0


def test_drain_and_resume(server: ApiServer, hvc: Any) -> None:
    server.add_node("m3")
    r = hvc("node", "drain", "m3", "--reason", "new disks")
    assert r.exit_code == 0, r.output
    assert "m3[/]" not in r.output and "draining (new disks)" in r.output
    r = hvc("node", "resume", "m3", "--failback", "none")
    assert r.exit_code == 0 and "up" in r.output
    assert hvc("node", "resume", "m3", "--failback", "sometimes").exit_code != 0
