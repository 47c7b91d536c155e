"""A memory store that counts its transactions: what batching writes must bring down."""

from __future__ import annotations

from collections.abc import Sequence

from hvcluster.store.base import Compare, Delete, Get, Put, TxnResult
from hvcluster.store.memory_store import MemoryStore


class CountingStore(MemoryStore):
    """A memory store that counts the transactions it commits or refuses."""

    txns = 0

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Put | Delete | Get],
        failure: Sequence[Put | Delete | Get] = (),
    ) -> TxnResult:
        self.txns += 1
        return await super().txn(compares, success, failure)
