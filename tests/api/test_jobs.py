"""One job per VM, enforced by the store (``jobs/<vm>``): concurrent creators through the
API, live, quick, shared-nothing and storage moves mixed, exactly one wins and the others
are told which job holds the VM."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from hvcluster.models.base import decode, encode
from hvcluster.models.job import Job
from hvcluster.models.migration import MigrationKind
from hvcluster.models.node import Node
from hvcluster.store.base import Compare, KeyValue, Op, TxnResult
from hvcluster.store.jobs import busy
from hvcluster.store.memory_store import MemoryStore
from hvcluster.store.migrations import create_migration, create_move
from tests.api.conftest import KEYS
from tests.api.test_storage_moves import setup
from tests.tokens import api_client


class GatedStore(MemoryStore):
    """A MemoryStore where the first ``gate`` reads of the VM's job key wait for each other:
    every concurrent creator has found the VM free before any of them writes (the gap a
    read check leaves). Counts the transactions that tried to claim a job key."""

    def __init__(self, gate: int) -> None:
        super().__init__()
        self.gate, self.arrived, self.claims = gate, 0, 0
        self.all_checked = asyncio.Event()

    async def get(self, key: str) -> KeyValue | None:
        if key == KEYS.job("db") and self.arrived < self.gate:
            self.arrived += 1
            if self.arrived == self.gate:
                self.all_checked.set()
            await asyncio.wait_for(self.all_checked.wait(), 10)
        return await super().get(key)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        if any(c.key.startswith(KEYS.prefix("jobs")) for c in compares):
            self.claims += 1
        return await super().txn(compares, success, failure)


ASKS = [
    ("/vms/db/move", {"to": "n2"}),
    ("/vms/db/move", {"to": "n2", "kind": "quick"}),
    ("/vms/db/move-storage", {"volume": "b"}),
    ("/vms/db/move", {"to": "n2"}),
    ("/vms/db/move-storage", {"volume": "b"}),
] * 2


@pytest.fixture
async def gated() -> AsyncIterator[GatedStore]:
    s = GatedStore(gate=len(ASKS))
    try:
        yield s
    finally:
        await s.close()


async def test_concurrent_creators_exactly_one_wins(gated: GatedStore) -> None:
    await setup(gated)
    kv = await gated.get(KEYS.node("n2"))
    assert kv is not None
    n2 = decode(Node, kv.key, kv.value).model_copy(update={"volumes": ("a", "b")})
    await gated.put(KEYS.node("n2"), encode(n2))
    async with api_client(gated, KEYS) as api:
        asks = ASKS
        answers = await asyncio.gather(*(api.post(path, json=body) for path, body in asks))
    won = [a for a in answers if a.status_code == 202]
    lost = [a for a in answers if a.status_code == 409]
    assert len(won) == 1, [a.text for a in answers]
    assert len(lost) == len(asks) - 1, [a.text for a in answers]
    winner = won[0].json()
    kv = await gated.get(KEYS.job("db"))
    assert kv is not None and decode(Job, kv.key, kv.value).id == winner["id"]
    what = "storage move" if winner["kind"] == "storage" else f"{winner['kind']} migration"
    held = f"vm db is already moving ({what} {winner['id']}, requested)"
    assert {a.json()["error"] for a in lost} == {held}, [a.text for a in lost]
    assert gated.claims == len(asks)  # every one passed the read check: the store decided


async def test_the_gap_between_check_and_create_is_closed(store: MemoryStore) -> None:
    """Both creators found the VM free; only the first create commits."""
    await setup(store)
    assert await busy(store, KEYS, "db") is None
    move = await create_move(store, KEYS, "db", "n1", 4, "b", "test")
    assert move is not None
    live = await create_migration(store, KEYS, "db", "n1", "n2", 4, MigrationKind.LIVE, "test")
    assert live is None
    assert await busy(store, KEYS, "db") == (
        f"vm db is already moving (storage move {move.id}, requested)"
    )
