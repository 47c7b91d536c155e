"""One job per VM, enforced by the store (``jobs/<vm>``): concurrent creators through the
API, live, quick, shared-nothing and storage moves mixed, exactly one wins and the others
are told which job holds the VM."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest

from hvcluster.api import create_app
from hvcluster.models.base import decode, encode
from hvcluster.models.migration import MigrationKind
from hvcluster.models.node import Node
from hvcluster.store.base import KeyValue, Op, TxnResult
from hvcluster.store.jobs import Job, busy
from hvcluster.store.memory import MemoryStore
from hvcluster.store.migrations import create_migration
from hvcluster.store.storage_moves import create_move
from tests.api.conftest import KEYS
from tests.api.test_storage_moves import setup


class YieldingStore(MemoryStore):
    """A MemoryStore that lets other tasks run before every read and transaction, as a
    networked store does: concurrent requests interleave between their checks and writes.
    Counts the transactions that tried to claim a job key."""

    claims = 0

    async def get(self, key: str) -> KeyValue | None:
        await asyncio.sleep(0)
        return await super().get(key)

    async def txn(
        self, compares: Sequence[object], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        await asyncio.sleep(0)
        if any(getattr(c, "key", "").startswith(KEYS.prefix("jobs")) for c in compares):
            self.claims += 1
        return await super().txn(compares, success, failure)  # type: ignore[arg-type]


@pytest.fixture
async def ystore() -> AsyncIterator[YieldingStore]:
    s = YieldingStore()
    try:
        yield s
    finally:
        await s.close()


async def test_concurrent_creators_exactly_one_wins(ystore: YieldingStore) -> None:
    await setup(ystore)
    kv = await ystore.get(KEYS.node("n2"))
    assert kv is not None
    n2 = decode(Node, kv.key, kv.value).model_copy(update={"volumes": ("a", "b")})
    await ystore.put(KEYS.node("n2"), encode(n2))
    app = create_app(ystore, KEYS, "n1")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api/api/v1") as api:
        asks = [
            ("/vms/db/move", {"to": "n2"}),
            ("/vms/db/move", {"to": "n2", "kind": "quick"}),
            ("/vms/db/move-storage", {"volume": "b"}),
            ("/vms/db/move", {"to": "n2"}),
            ("/vms/db/move-storage", {"volume": "b"}),
        ] * 2
        answers = await asyncio.gather(*(api.post(path, json=body) for path, body in asks))
    won = [a for a in answers if a.status_code == 202]
    lost = [a for a in answers if a.status_code == 409]
    assert len(won) == 1, [a.text for a in answers]
    assert len(lost) == len(asks) - 1, [a.text for a in answers]
    winner = won[0].json()
    kv = await ystore.get(KEYS.job("db"))
    assert kv is not None and decode(Job, kv.key, kv.value).id == winner["id"]
    what = "storage move" if winner["kind"] == "storage" else f"{winner['kind']} migration"
    held = f"vm db is already moving ({what} {winner['id']}, requested)"
    assert {a.json()["error"] for a in lost} == {held}
    assert ystore.claims > 1  # several passed the read check: the store decided


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
