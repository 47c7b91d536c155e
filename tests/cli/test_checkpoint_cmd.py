"""``hvc vm checkpoint create|list|revert|rm`` against a real API server; the node's part
(ending the operation, writing the list) is played here as its agent would."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from hvcluster.models.base import encode
from hvcluster.models.checkpoint import Checkpoint, CheckpointList, CheckpointOp
from hvcluster.models.lifecycle import MigrationState
from hvcluster.models.vm import Disk, VMSpec
from hvcluster.store.checkpoints import change_op, list_put, read_ops
from tests.cli.conftest import KEYS, ApiServer
from tests.cli.test_move import cluster

pytestmark = pytest.mark.timeout(60)


def agent_soon(server: ApiServer, fail: str = "") -> threading.Thread:
    """End the first active operation: done with the list written, or failed with ``fail``."""
    store = server.store
    assert store is not None

    def end(op: CheckpointOp) -> CheckpointOp:
        state = MigrationState.FAILED if fail else MigrationState.DONE
        return op.model_copy(update={"state": state, "reason": fail})

    def taken(op: CheckpointOp) -> CheckpointOp:
        return op.model_copy(update={"state": MigrationState.PREPARING})

    async def once() -> bool:
        for op in (await read_ops(store, KEYS)).values():
            if op.active:
                await change_op(
                    store,
                    KEYS,
                    op.id,
                    lambda o: o.model_copy(update={"state": MigrationState.PREPARING}),
                )
                kept = Checkpoint(name=op.name, created=time.time(), size=3 << 20, memory=True)
                listed = CheckpointList(vm=op.vm, checkpoints=(kept,), node="m1")
                ops = [] if fail else [list_put(KEYS, listed)]
                return await change_op(store, KEYS, op.id, end, ops=ops) is not None
        return False

    def run() -> None:
        for _ in range(200):
            if server.run(once()):
                return
            time.sleep(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_checkpoint_commands(server: ApiServer, hvc: Any) -> None:
    cluster(server, "db")
    store = server.store
    assert store is not None
    spec = VMSpec(name="db", memory_mib=128, disks=(Disk(volume="csv", path="db.qcow2"),))
    server.run(store.put(KEYS.vm("db"), encode(spec)))
    refused = hvc("vm", "checkpoint", "create", "db", "Bad")
    assert refused.exit_code == 2 and "invalid checkpoint name" in refused.output
    thread = agent_soon(server)
    made = hvc("vm", "checkpoint", "create", "db", "before", "--timeout", "20")
    thread.join(timeout=10)
    assert made.exit_code == 0, made.output
    assert "checkpoint create 'before' of db on m1: done" in made.output
    listed = hvc("vm", "checkpoint", "list", "db")
    assert listed.exit_code == 0, listed.output
    assert "before" in listed.output and "3.0 MiB" in listed.output and "yes" in listed.output
    thread = agent_soon(server, fail="QEMU said no")
    failed = hvc("vm", "checkpoint", "revert", "db", "before", "--timeout", "20")
    thread.join(timeout=10)
    assert failed.exit_code == 1 and "failed: QEMU said no" in failed.output
    missing = hvc("vm", "checkpoint", "rm", "db", "nope")
    assert missing.exit_code == 3 and "no checkpoint 'nope'" in missing.output
    asked = hvc("vm", "checkpoint", "rm", "db", "before", "--no-wait")
    assert asked.exit_code == 0, asked.output
    assert "checkpoint delete 'before' of db on m1: requested" in asked.output
    busy = hvc("vm", "checkpoint", "create", "db", "again")
    assert busy.exit_code == 4 and "busy with checkpoint delete 'before'" in busy.output
