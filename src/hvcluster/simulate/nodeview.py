"""One node's view of the shared memory store, which a simulation can cut off (a network
partition between that node and etcd) or freeze (the node's agent hangs).

Every daemon of a simulated cluster shares one :class:`MemoryStore` (etcd as a whole); each
reaches it through a :class:`NodeView`, so a fault can hit one node while the rest of the
cluster goes on. A cut view fails every call as an unreachable etcd does
(:class:`StoreUnavailable`; keepalives too, so the node's lease runs out and its watchdog
fires) and its watches deliver nothing until it is healed, as an etcd watch waits out a
partition. A hung view blocks every call until the hang ends: the agent makes no progress,
feeds no watchdog, and answers nobody.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from hvcluster.models.errors import StoreUnavailable
from hvcluster.store.base import (
    Compare,
    KeyValue,
    Lease,
    Member,
    Membership,
    Op,
    Page,
    Store,
    StoreHealth,
    TxnResult,
    WatchEvent,
)


class NodeView(Store):
    """``node``'s way to the shared store ``inner``; see the module docstring."""

    def __init__(self, inner: Store, node: str) -> None:
        self.inner = inner
        self.node = node
        self.cut = False
        self._running = asyncio.Event()  # set while not hung
        self._running.set()
        self._reachable = asyncio.Event()  # set while not cut
        self._reachable.set()

    # --- faults ------------------------------------------------------------------------
    @property
    def hung(self) -> bool:
        return not self._running.is_set()

    def set_cut(self, cut: bool) -> None:
        self.cut = cut
        if cut:
            self._reachable.clear()
        else:
            self._reachable.set()

    def set_hung(self, hung: bool) -> None:
        if hung:
            self._running.clear()
        else:
            self._running.set()

    async def _enter(self) -> None:
        await self._running.wait()
        if self.cut:
            raise StoreUnavailable(f"{self.node} is cut off from etcd (simulated partition)")

    # --- the store, through the faults ----------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        await self._enter()
        return await self.inner.get(key)

    async def _range_page(self, prefix: str, start: str, revision: int, limit: int) -> Page:
        await self._enter()
        return await self.inner._range_page(prefix, start, revision, limit)

    async def revision(self) -> int:
        await self._enter()
        return await self.inner.revision()

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        await self._enter()
        return await self.inner.put(key, value, lease)

    async def delete(self, key: str, prefix: bool = False) -> int:
        await self._enter()
        return await self.inner.delete(key, prefix)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        await self._enter()
        return await self.inner.txn(compares, success, failure)

    async def grant(self, ttl: float) -> Lease:
        await self._enter()
        return await self.inner.grant(ttl)

    async def keepalive(self, lease_id: int, timeout: float | None = None) -> float:
        await self._enter()
        return await self.inner.keepalive(lease_id, timeout)

    async def revoke(self, lease_id: int) -> None:
        await self._enter()
        await self.inner.revoke(lease_id)

    async def lease_ttl(self, lease_id: int) -> float:
        await self._enter()
        return await self.inner.lease_ttl(lease_id)

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        async for event in self.inner.watch(prefix, start_revision):
            await self._running.wait()
            await self._reachable.wait()  # held back while cut off, as etcd's watch waits
            yield event

    async def health(self) -> StoreHealth:
        await self._running.wait()
        if not self.cut:
            return await self.inner.health()
        # What a node cut off sees: the one member it asks does not answer.
        member = Member(
            name="memory", id=1, client_urls=(), reachable=False, error="cut off (simulated)"
        )
        return StoreHealth((member,), None)

    async def members(self) -> tuple[Membership, ...]:
        await self._enter()
        return await self.inner.members()

    async def add_member(self, peer_urls: Sequence[str], learner: bool = True) -> Membership:
        await self._enter()
        return await self.inner.add_member(peer_urls, learner)

    async def promote_member(self, member_id: int) -> None:
        await self._enter()
        await self.inner.promote_member(member_id)

    async def remove_member(self, member_id: int) -> None:
        await self._enter()
        await self.inner.remove_member(member_id)

    async def close(self) -> None:
        """Nothing of its own to release: the shared store is closed by its owner."""
