"""``hvc vm move NAME --storage VOLUME [--wait]`` against a real API server."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from hvcluster.models.base import decode, encode
from hvcluster.models.lifecycle import MigrationState
from hvcluster.models.migration import Migration
from hvcluster.models.node import Node
from hvcluster.models.storage import Volume
from hvcluster.models.vm import Disk, VMSpec
from hvcluster.store.migrations import change_migration, read_moves
from tests.cli.conftest import KEYS, ApiServer
from tests.cli.test_move import cluster

pytestmark = pytest.mark.timeout(60)


def with_volumes(server: ApiServer) -> None:
    store = server.store
    assert store is not None

    async def setup() -> None:
        kv = await store.get(KEYS.node("m1"))
        assert kv is not None
        node = decode(Node, kv.key, kv.value).model_copy(update={"volumes": ("a", "b")})
        await store.put(KEYS.node("m1"), encode(node))
        for name in ("a", "b"):
            volume = Volume(name=name, path=f"/srv/{name}", id=uuid.uuid4().hex)
            await store.put(KEYS.volume(name), encode(volume))
        spec = VMSpec(name="db", memory_mib=128, disks=(Disk(volume="a", path="db.qcow2"),))
        await store.put(KEYS.vm("db"), encode(spec))

    server.run(setup())


def finish_soon(server: ApiServer) -> threading.Thread:
    """As the owning agent would: carry the stored move to done."""
    store = server.store
    assert store is not None

    async def finish() -> bool:
        for rec in (await read_moves(store, KEYS)).values():
            for state in (MigrationState.PREPARING, MigrationState.TRANSFERRING):
                await change_migration(
                    store, KEYS, rec.id, lambda m, s=state: _to(m, s), storage=True
                )
            await change_migration(
                store, KEYS, rec.id, lambda m: _to(m, MigrationState.SWITCHING), storage=True
            )
            return (
                await change_migration(
                    store, KEYS, rec.id, lambda m: _to(m, MigrationState.DONE), storage=True
                )
                is not None
            )
        return False

    def run() -> None:
        for _ in range(100):
            if server.run(finish()):
                return
            time.sleep(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _to(m: Migration, state: MigrationState) -> Migration:
    return m.model_copy(update={"state": state})


def test_move_storage_waits_for_the_end(server: ApiServer, hvc: Any) -> None:
    cluster(server, "db")
    with_volumes(server)
    assert hvc("vm", "move", "db", "--storage", "b", "--to", "m2").exit_code != 0
    assert "not with --quick" in hvc("vm", "move", "db", "--with-storage", "b", "--quick").output
    refused = hvc("vm", "move", "db", "--storage", "ghost")
    assert refused.exit_code != 0 and "volume 'ghost' not found" in refused.output
    thread = finish_soon(server)
    r = hvc("vm", "move", "db", "--storage", "b", "--wait", "--timeout", "20")
    thread.join(timeout=10)
    assert r.exit_code == 0, r.output
    assert "of db (storage, on m1 to volume b): done" in r.output


def test_move_with_storage_asks_for_a_shared_nothing_migration(server: ApiServer, hvc: Any) -> None:
    cluster(server, "db")
    with_volumes(server)  # m1 sees a and b; m2 sees none
    refused = hvc("vm", "move", "db", "--to", "m2", "--with-storage", "b")
    assert refused.exit_code != 0 and "m2 lacks volume 'b'" in refused.output


def test_storage_moves_are_listed_and_cancelled_with_the_migrations(
    server: ApiServer, hvc: Any
) -> None:
    cluster(server, "db")
    with_volumes(server)
    r = hvc("vm", "move", "db", "--storage", "b")
    assert r.exit_code == 0 and "requested" in r.output
    listed = hvc("migration", "list")
    assert listed.exit_code == 0 and "storage" in listed.output and "(b)" in listed.output
    store = server.store
    assert store is not None
    [rec] = [m for m in server.run(read_moves(store, KEYS)).values() if m.active]
    cancelled = hvc("migration", "cancel", rec.id)
    assert cancelled.exit_code == 0, cancelled.output
    assert "cancelled" in cancelled.output
    assert "not found" in hvc("migration", "cancel", "nope-123").output
