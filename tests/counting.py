"""Memory stores that count what is asked of them: what batching writes and watched caches
must bring down."""

from __future__ import annotations

import time
from collections.abc import Sequence

from hvcluster.store.base import Compare, Delete, Get, Put, Range, TxnResult
from hvcluster.store.clock import Now
from hvcluster.store.memory_store import MemoryStore


class CountingStore(MemoryStore):
    """A memory store that counts the transactions it commits or refuses, and records the
    prefix of every range (whole-prefix read) asked of it (``ranged``), and of every
    whole-prefix get in a transaction (``got``)."""

    txns = 0

    def __init__(self, clock: Now = time.monotonic) -> None:
        super().__init__(clock)
        self.ranged: list[str] = []
        self.got: list[str] = []

    async def range(self, prefix: str, revision: int = 0) -> Range:
        self.ranged.append(prefix)
        return await super().range(prefix, revision)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Put | Delete | Get],
        failure: Sequence[Put | Delete | Get] = (),
    ) -> TxnResult:
        self.txns += 1
        self.got += [op.key for op in success if isinstance(op, Get) and op.prefix]
        return await super().txn(compares, success, failure)
