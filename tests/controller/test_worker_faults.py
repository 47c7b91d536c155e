"""The controller's loops survive an unexpected exception of one job: the migration
coordinator fails that record (once, with the reason, said) and judges the others; the
controller cycle says the decision it could not apply and applies the others.

The fault is a store that raises an unexpected ``RuntimeError`` (not a ``StoreError``) on
writes of one key, a given number of times: a stateful fake, as a bug in a backend would."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

import pytest

from hvcluster.controller.loop import Controller
from hvcluster.models.base import encode
from hvcluster.models.lifecycle import MigrationState
from hvcluster.models.migration import MigrationKind
from hvcluster.models.vm import VMSpec
from hvcluster.store.base import Compare, Op, TxnResult
from hvcluster.store.memory_store import MemoryStore
from hvcluster.store.migrations import create_migration
from tests.controller.test_migrations import KEYS, coordinator, node, record, vm_on

_M = MigrationState


class FaultyStore(MemoryStore):
    """A memory store whose transactions on the keys in ``broken`` raise RuntimeError, as
    many times as the count says."""

    def __init__(self) -> None:
        super().__init__()
        self.broken: dict[str, int] = {}

    def _trip(self, keys: Sequence[str]) -> None:
        for key in keys:
            if self.broken.get(key, 0) > 0:
                self.broken[key] -= 1
                raise RuntimeError(f"backend bug on {key}")

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        self._trip([c.key for c in compares] + [op.key for op in success])
        return await super().txn(compares, success, failure)


@pytest.fixture
async def faulty() -> AsyncIterator[FaultyStore]:
    s = FaultyStore()
    try:
        yield s
    finally:
        await s.close()


async def test_one_record_that_raises_fails_alone(faulty: FaultyStore) -> None:
    await node(faulty, "n1")
    await node(faulty, "n2")
    await vm_on(faulty, "a", "n1")
    await vm_on(faulty, "b", "n1")
    bad = await create_migration(faulty, KEYS, "a", "n1", "n2", 1, MigrationKind.LIVE, "test")
    good = await create_migration(faulty, KEYS, "b", "n1", "n2", 1, MigrationKind.LIVE, "test")
    assert bad and good
    faulty.broken[KEYS.migration(bad.id)] = 1  # its step raises once
    said: list[str] = []
    coord = coordinator(faulty, said)
    await coord.cycle()
    failed = await record(faulty, bad.id)
    assert failed is not None and failed.state is _M.FAILED
    assert failed.reason == (
        f"unexpected error in the controller: RuntimeError: backend bug on {KEYS.migration(bad.id)}"
    )
    assert any(s.startswith(f"migration.failed migration {bad.id} of a") for s in said)
    other = await record(faulty, good.id)
    assert other is not None and other.state is _M.PREPARING, "the other record went on"
    faulty.broken[KEYS.migration(bad.id)] = 100  # it would raise again: never judged again
    await coord.cycle()
    assert faulty.broken[KEYS.migration(bad.id)] == 100


async def test_a_decision_that_raises_is_said_and_the_others_apply(faulty: FaultyStore) -> None:
    await node(faulty, "n1")
    for vm in ("a", "b"):
        await faulty.put(KEYS.vm(vm), encode(VMSpec(name=vm, memory_mib=128)))
    faulty.broken[KEYS.placement("a")] = 1_000  # placing a raises, every time
    said: list[tuple[str, str, str]] = []

    async def say(kind: str, subject: str, reason: str) -> None:
        said.append((kind, subject, reason))

    controller = Controller(faulty, KEYS, "n1", say, lambda: True, time.time)
    try:
        await controller.cycle()
        await controller.cycle()
    finally:
        controller.close()
    placed = await faulty.range(KEYS.prefix("placements"))
    assert [kv.key for kv in placed.kvs] == [KEYS.placement("b")]
    errors = [(s, r) for k, s, r in said if k == "controller.error"]
    assert len(errors) == 1, "said once while it repeats"
    assert errors[0][0] == "vm/a" and "RuntimeError: backend bug on" in errors[0][1]
    assert any(k == "vm.placed" and s == "vm/b" for k, s, _ in said)


async def test_a_housekeeping_step_that_raises_does_not_stop_the_records(
    faulty: FaultyStore,
) -> None:
    """The sweep of stale job keys raises (every time): said once, and the records under
    way are still judged."""
    await node(faulty, "n1")
    await node(faulty, "n2")
    await vm_on(faulty, "a", "n1")
    await vm_on(faulty, "b", "n1")
    gone = await create_migration(faulty, KEYS, "a", "n1", "n2", 1, MigrationKind.LIVE, "test")
    assert gone is not None
    await faulty.delete(KEYS.migration(gone.id))  # its job key is stale now
    faulty.broken[KEYS.job("a")] = 1_000  # clearing it raises
    good = await create_migration(faulty, KEYS, "b", "n1", "n2", 1, MigrationKind.LIVE, "test")
    assert good is not None
    said: list[str] = []
    coord = coordinator(faulty, said)
    await coord.cycle()
    await coord.cycle()
    other = await record(faulty, good.id)
    assert other is not None and other.state is _M.PREPARING
    errors = [s for s in said if s.startswith("controller.error")]
    assert errors == [
        f"controller.error the job keys' sweep failed: RuntimeError: backend bug on {KEYS.job('a')}"
    ]
