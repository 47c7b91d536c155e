"""Leader election on the store contract alone (lease + txn + watch), as etcd's recipe.

Each candidate puts a key ``election/<name>/<lease id>`` bound to its own lease, its
candidate id as the value. The candidate whose key has the lowest ``create_revision`` leads;
every other one waits for the keys older than its own to go (resigned, or their lease
expired), then leads. So at most one key is the oldest at any revision, and a leader whose
lease dies loses its key, and the lead, with it.

A leader trusts its leadership only while its lease is *certainly* alive
(:meth:`LeaseKeeper.certainly_alive`: a keepalive sent less than a TTL ago was confirmed).
The server cannot expire the lease, and so cannot let the next candidate in, before then:
:attr:`Election.is_leader` is never true for two candidates at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from hvcluster.models.errors import LeaseLost, StoreError
from hvcluster.store.base import (
    Compare,
    Delete,
    EventType,
    Get,
    KeyValue,
    Put,
    Store,
    WatchCompacted,
)
from hvcluster.store.keys import Keys
from hvcluster.store.lease import LeaseKeeper

log = logging.getLogger(__name__)


def _leader_of(candidates: dict[str, tuple[int, bytes]]) -> str | None:
    if not candidates:
        return None
    _, value = min(candidates.values())
    return value.decode(errors="replace")


async def current_leader(store: Store, prefix: str) -> str | None:
    """Who leads the election whose keys are under ``prefix`` (``Keys.election(name)``),
    for those who only watch it (the dashboard), or None."""
    r = await store.range(prefix)
    return _leader_of({kv.key: (kv.create_revision, kv.value) for kv in r.kvs})


class Election:
    """One candidate's view of the election ``name`` (e.g. ``controller``)."""

    def __init__(
        self, store: Store, keeper: LeaseKeeper, name: str = "controller", keys: Keys | None = None
    ) -> None:
        self.store = store
        self.keeper = keeper
        self.prefix = (keys or Keys()).election(name)
        self._key: str | None = None
        self._create_rev = 0
        self._leading = False
        self._monitor: asyncio.Task[None] | None = None
        #: Set when leadership ends without a resign: lease lost or key deleted.
        self.lost = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        """True while this candidate leads and its lease is certainly alive."""
        return self._leading and not self.lost.is_set() and self.keeper.certainly_alive()

    async def campaign(self, candidate_id: str) -> None:
        """Stand for election and return once this candidate leads.

        Raises :class:`LeaseLost` if the lease goes first. Cancelling it withdraws the
        candidacy.
        """
        if self._leading:
            return
        lease = self.keeper.lease_id
        key = f"{self.prefix}{lease:016x}"
        value = candidate_id.encode()
        result = await self.store.txn(
            [Compare(key, "create", "==", 0)], [Put(key, value, lease)], [Get(key)]
        )
        if result.succeeded:
            create_rev = result.revision
        else:  # this lease already stands (a campaign before was cancelled): keep its place
            if not result.gets or not result.gets[0]:
                raise StoreError(f"election key {key} vanished while campaigning")
            kv = result.gets[0][0]
            create_rev = kv.create_revision
            if kv.value != value:
                await self.store.txn(
                    [Compare(key, "create", "==", create_rev)], [Put(key, value, lease)]
                )
        self._key, self._create_rev = key, create_rev
        self.lost.clear()
        try:
            revision = await self._wait_for_turn()
        except BaseException:
            with contextlib.suppress(StoreError):
                await self._withdraw()
            raise
        self._leading = True
        self._monitor = asyncio.get_running_loop().create_task(self._watch_lead(revision))
        log.info("%s leads %s (key %s)", candidate_id, self.prefix, key)

    async def resign(self) -> None:
        """Give up the lead (or the candidacy) at once; the next candidate takes over."""
        self._leading = False
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
        await self._withdraw()

    async def leader(self) -> str | None:
        """The current leader's candidate id, or None."""
        return await current_leader(self.store, self.prefix)

    async def observe(self) -> AsyncIterator[str | None]:
        """The current leader, then every change of leader (None: nobody leads)."""
        last: object = object()
        while True:
            r = await self.store.range(self.prefix)
            candidates = {kv.key: (kv.create_revision, kv.value) for kv in r.kvs}
            current = _leader_of(candidates)
            if current != last:
                last = current
                yield current
            try:
                async for ev in self.store.watch(self.prefix, r.revision + 1):
                    if ev.type == EventType.PUT:
                        created = candidates.get(ev.key, (ev.mod_revision, b""))[0]
                        candidates[ev.key] = (created, ev.value)
                    else:
                        candidates.pop(ev.key, None)
                    current = _leader_of(candidates)
                    if current != last:
                        last = current
                        yield current
            except WatchCompacted:
                continue

    # --- internals -------------------------------------------------------------------
    async def _wait_for_turn(self) -> int:
        """Wait until no candidate key is older than ours; return the revision seen then."""
        while True:
            if self.keeper.lost.is_set():
                raise LeaseLost("the candidate's lease is gone")
            r = await self.store.range(self.prefix)
            mine = next((kv for kv in r.kvs if kv.key == self._key), None)
            if mine is None or mine.create_revision != self._create_rev:
                raise LeaseLost(f"candidacy {self._key} is gone: its lease expired or was revoked")
            older = [kv for kv in r.kvs if kv.create_revision < self._create_rev]
            if not older:
                return r.revision
            await self._until_deleted(r.revision + 1, older)

    async def _until_deleted(self, revision: int, older: list[KeyValue]) -> None:
        """Return when any of ``older`` or our own key is deleted (or history is compacted)."""
        watched = {kv.key for kv in older} | {self._key}

        async def deleted() -> None:
            with contextlib.suppress(WatchCompacted):
                async for ev in self.store.watch(self.prefix, revision):
                    if ev.type == EventType.DELETE and ev.key in watched:
                        return

        await self._unless_lease_lost(deleted())

    async def _unless_lease_lost(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work``; raise :class:`LeaseLost` if the lease goes first."""
        task = asyncio.ensure_future(work)
        lost = asyncio.ensure_future(self.keeper.lost.wait())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (task, lost):
                t.cancel()
            await asyncio.gather(task, lost, return_exceptions=True)
        if task.done() and not task.cancelled():
            error = task.exception()
            if error is not None:
                raise error
        if self.keeper.lost.is_set():
            raise LeaseLost("the candidate's lease is gone")

    async def _watch_lead(self, revision: int) -> None:
        """While leading: end the lead when our key goes or our lease is lost."""
        key, rev = self._key, self._create_rev

        async def key_gone() -> None:
            start = revision + 1
            while True:
                try:
                    async for ev in self.store.watch(self.prefix, start):
                        if ev.key == key and ev.type == EventType.DELETE:
                            return
                except WatchCompacted:
                    r = await self.store.range(self.prefix)
                    if not any(kv.key == key and kv.create_revision == rev for kv in r.kvs):
                        return
                    start = r.revision + 1

        try:
            await self._unless_lease_lost(key_gone())
        except LeaseLost:
            pass
        except StoreError as e:
            log.warning("watch of the lead on %s failed: %s", key, e)
        if self._leading:
            self._leading = False
            self.lost.set()
            log.warning("lost the lead of %s", self.prefix)

    async def _withdraw(self) -> None:
        key, rev = self._key, self._create_rev
        self._key, self._create_rev = None, 0
        if key is not None:
            await self.store.txn([Compare(key, "create", "==", rev)], [Delete(key)])
