"""The in-memory store: etcd's semantics in one process, on a clock the caller chooses.

Revisions, versions, transactions, leases and watches behave as etcd's do, so the contract
suite runs unchanged on both backends and a simulation can run many agents against one
:class:`MemoryStore`. Every operation is atomic: it runs without an ``await`` in its middle
(one checkpoint at its start lets other tasks interleave as they would around real I/O).

Reads at a past revision (the pages of a :meth:`~Store.range` after the first, given a
``page_size``) are answered from an undo log of every change, kept as long as the watch
history; a revision older than that is compacted (:class:`RevisionCompacted`).

Leases expire by the injected clock. Expiry is applied at the start of every operation and by
:meth:`MemoryStore.expire_leases` (a simulation calls it after advancing a
:class:`~hvcluster.store.clock.ManualClock`); with the real clock a small background task
also expires them within ~50 ms so that watchers see the DELETEs without other traffic.

:meth:`MemoryStore.set_available` simulates an etcd outage: every call fails with
:class:`StoreUnavailable`, leases do not expire meanwhile, and when the store comes back every
lease's TTL restarts in full (what a new etcd leader does).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from hvcluster.models.errors import LeaseLost, StoreError, StoreUnavailable
from hvcluster.store.base import (
    Compare,
    Delete,
    EventType,
    Get,
    KeyValue,
    Lease,
    Member,
    Membership,
    Op,
    Page,
    Put,
    RevisionCompacted,
    Store,
    StoreHealth,
    TxnResult,
    WatchCompacted,
    WatchEvent,
)
from hvcluster.store.clock import Now
from hvcluster.store.memory_members import MemberList

REAPER_PERIOD = 0.05  # seconds between expiry checks with the real clock
MAX_TXN_OPS = 128  # etcd's default --max-txn-ops


@dataclass
class _Lease:
    id: int
    ttl: float
    deadline: float
    keys: set[str] = field(default_factory=set)


def _compare(actual: int | bytes, op: str, expected: int | bytes) -> bool:
    if op == "==":
        return actual == expected
    if op == "!=":
        return actual != expected
    if op == "<":
        return actual < expected  # type: ignore[operator]
    if op == ">":
        return actual > expected  # type: ignore[operator]
    raise StoreError(f"compare op must be one of ==, !=, <, >; got {op!r}")


class MemoryStore(Store):
    """An etcd-shaped store held in this process. Not thread-safe; safe across tasks."""

    def __init__(
        self,
        clock: Now = time.monotonic,
        *,
        history: int = 100_000,
        background_expiry: bool | None = None,
        page_size: int | None = None,
    ) -> None:
        """``history``: how many change events are kept for watches; older ones are
        compacted away. ``background_expiry`` defaults to on with the real clock only.
        ``page_size``: how many keys one page of a range read holds (None: all), so that
        tests see reads in pages interleave with writes as they do on etcd."""
        if history < 1:
            raise ValueError(f"history must be at least 1, got {history}")
        if page_size is not None and page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        self._page_size = page_size
        self._clock = clock
        self._history_limit = history
        self._background = (
            clock is time.monotonic if background_expiry is None else (background_expiry)
        )
        self._data: dict[str, KeyValue] = {}
        self._sorted: list[str] = []
        self._rev = 1  # an empty etcd is at revision 1
        self._events: list[WatchEvent] = []
        # (revision, key, the key before that change: None if absent), in revision order
        self._undo: list[tuple[int, str, KeyValue | None]] = []
        self._compacted = 0  # revisions up to this one are gone from the history
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(0x1000)
        self._changed = asyncio.Event()
        self._closed = False
        self._available = True
        self.member_list = MemberList()
        self._reaper: asyncio.Task[None] | None = None
        self._lease_added = asyncio.Event()
        self._caught_up = 0  # watches that sent everything and wait for the next change

    # --- faults and time -------------------------------------------------------------
    @property
    def available(self) -> bool:
        return self._available

    def set_available(self, available: bool) -> None:
        """Simulate an outage of the whole store (``False``) and its end (``True``)."""
        if available and not self._available:
            now = self._clock()
            for lease in self._leases.values():
                lease.deadline = now + lease.ttl
        self._available = available
        self._notify()

    def expire_leases(self) -> int:
        """Revoke every lease whose deadline has passed; return how many went."""
        if not self._available or self._closed:
            return 0
        now = self._clock()
        due = [lease for lease in self._leases.values() if lease.deadline <= now]
        for lease in sorted(due, key=lambda x: (x.deadline, x.id)):
            self._revoke(lease.id)
        return len(due)

    async def compact(self, revision: int) -> None:
        """Forget the change history before ``revision`` (as etcd's compaction does)."""
        self._enter()
        if revision > self._rev:
            raise StoreError(f"cannot compact to revision {revision}: the store is at {self._rev}")
        self._compact_to(revision)

    # --- reads -----------------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        await self._checkpoint()
        return self._data.get(key)

    async def _range_page(self, prefix: str, start: str, revision: int, limit: int) -> Page:
        await self._checkpoint()
        at = revision or self._rev
        kvs = [kv for kv in self._as_of(prefix, at) if kv.key >= start]
        size = len(kvs) if self._page_size is None else self._page_size
        return Page(tuple(kvs[:size]), len(kvs) > size, at)

    async def revision(self) -> int:
        await self._checkpoint()
        return self._rev

    def peek(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """The revision and the keys under ``prefix`` now, read at once: for a simulation's
        own checks, which look without taking part (no turn given to other tasks, no lease
        expired, no outage or closing in the way)."""
        return self._rev, [self._data[k] for k in self._keys_under(prefix)]

    @property
    def revision_now(self) -> int:
        """The current revision, read as :meth:`peek` reads."""
        return self._rev

    # --- writes ----------------------------------------------------------------------
    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        await self._checkpoint()
        self._check_lease(lease)
        rev = self._rev + 1
        self._commit([self._put(key, value, lease, rev)], rev)
        return rev

    async def delete(self, key: str, prefix: bool = False) -> int:
        await self._checkpoint()
        keys = list(self._keys_under(key)) if prefix else [key] if key in self._data else []
        rev = self._rev + 1
        self._commit([self._delete(k, rev) for k in keys], rev)
        return len(keys)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        await self._checkpoint()
        if max(len(compares), len(success), len(failure)) > MAX_TXN_OPS:
            raise StoreError(f"too many operations in txn request (at most {MAX_TXN_OPS})")
        for ops in (success, failure):
            self._check_ops(ops)
        succeeded = all(self._holds(c) for c in compares)
        ops = success if succeeded else failure
        for op in ops:
            if isinstance(op, Put):
                self._check_lease(op.lease)
        rev = self._rev + 1
        events: list[WatchEvent] = []
        gets: list[tuple[KeyValue, ...]] = []
        for op in ops:
            if isinstance(op, Put):
                events.append(self._put(op.key, op.value, op.lease, rev))
            elif isinstance(op, Delete):
                keys = self._keys_under(op.key) if op.prefix else [op.key]
                events.extend(self._delete(k, rev) for k in list(keys) if k in self._data)
            else:
                found = self._keys_under(op.key) if op.prefix else [op.key]
                gets.append(tuple(self._data[k] for k in found if k in self._data))
        self._commit(events, rev)
        return TxnResult(succeeded, self._rev, tuple(gets))

    # --- leases ----------------------------------------------------------------------
    async def grant(self, ttl: float) -> Lease:
        await self._checkpoint()
        if ttl <= 0:
            raise StoreError(f"lease ttl must be positive, got {ttl}")
        lease = _Lease(next(self._lease_ids), ttl, self._clock() + ttl)
        self._leases[lease.id] = lease
        self._start_reaper()
        return Lease(lease.id, ttl)

    async def keepalive(self, lease_id: int, timeout: float | None = None) -> float:
        await self._checkpoint()
        lease = self._lease(lease_id)
        lease.deadline = self._clock() + lease.ttl
        return lease.ttl

    async def revoke(self, lease_id: int) -> None:
        await self._checkpoint()
        if lease_id in self._leases:
            self._revoke(lease_id)

    async def lease_ttl(self, lease_id: int) -> float:
        await self._checkpoint()
        return max(0.0, self._lease(lease_id).deadline - self._clock())

    # --- watches ---------------------------------------------------------------------
    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        # As an etcd watch, it waits out an outage rather than failing.
        await asyncio.sleep(0)
        while not self._closed and not self._available:
            await self._changed.wait()
        next_rev = start_revision if start_revision > 0 else self._rev + 1
        while True:
            if self._closed:
                raise StoreUnavailable("the memory store is closed")
            if not self._available:
                await self._changed.wait()
                continue
            if next_rev <= self._compacted:
                raise WatchCompacted(self._compacted + 1)
            upto = self._rev
            if next_rev <= upto:
                start = bisect.bisect_left(self._events, next_rev, key=lambda e: e.mod_revision)
                batch = [e for e in self._events[start:] if e.key.startswith(prefix)]
                next_rev = upto + 1
                for event in batch:
                    yield event
                continue
            self._caught_up += 1
            try:
                await self._changed.wait()
            finally:
                self._caught_up -= 1

    @property
    def caught_up_watches(self) -> int:
        """How many watches have handed out every change up to now and wait for the next:
        what a test waits for before asserting that a watcher did nothing more."""
        return self._caught_up

    # --- the store itself ------------------------------------------------------------
    async def health(self) -> StoreHealth:
        if self._closed:
            raise StoreUnavailable("the memory store is closed")
        member = Member(
            name="memory",
            id=1,
            client_urls=(),
            is_leader=self._available,
            reachable=True,
            latency_ms=0.0,
            db_size=sum(len(kv.key) + len(kv.value) for kv in self._data.values()),
            raft_term=1,
            leader_id=1 if self._available else 0,
            error="" if self._available else "no leader (simulated outage)",
        )
        return StoreHealth((member,), "memory" if self._available else None)

    # etcd's member list: see hvcluster.store.memory_members
    async def members(self) -> tuple[Membership, ...]:
        await self._checkpoint()
        return self.member_list.all()

    async def add_member(self, peer_urls: Sequence[str], learner: bool = True) -> Membership:
        await self._checkpoint()
        return self.member_list.add(peer_urls, learner)

    def catch_up(self, member_id: int, name: str) -> None:
        """The member started and caught up with the leader (what a real learner does)."""
        self.member_list.catch_up(member_id, name)

    async def promote_member(self, member_id: int) -> None:
        await self._checkpoint()
        self.member_list.promote(member_id)

    async def remove_member(self, member_id: int) -> None:
        await self._checkpoint()
        self.member_list.remove(member_id)

    async def close(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        self._notify()

    # --- internals -------------------------------------------------------------------
    async def _checkpoint(self) -> None:
        await asyncio.sleep(0)
        self._enter()

    def _enter(self) -> None:
        if self._closed:
            raise StoreUnavailable("the memory store is closed")
        if not self._available:
            raise StoreUnavailable("the memory store is unavailable (simulated outage)")
        self.expire_leases()

    def _keys_under(self, prefix: str) -> list[str]:
        start = bisect.bisect_left(self._sorted, prefix)
        end = start
        while end < len(self._sorted) and self._sorted[end].startswith(prefix):
            end += 1
        return self._sorted[start:end]

    def _as_of(self, prefix: str, revision: int) -> list[KeyValue]:
        """The keys under ``prefix`` as they were at ``revision``, in key order."""
        if revision > self._rev:
            raise StoreError(f"revision {revision} is a future revision (now {self._rev})")
        if revision <= self._compacted:
            raise RevisionCompacted(revision, self._compacted + 1)
        now = {k: self._data[k] for k in self._keys_under(prefix)}
        if revision == self._rev:
            return list(now.values())
        since = bisect.bisect_right(self._undo, revision, key=lambda u: u[0])
        for _, key, before in reversed(self._undo[since:]):
            if key.startswith(prefix):
                if before is None:
                    now.pop(key, None)
                else:
                    now[key] = before
        return [now[k] for k in sorted(now)]

    def _holds(self, c: Compare) -> bool:
        if c.prefix:
            found = [self._data[k] for k in self._keys_under(c.key)]
            if found:
                return all(self._holds_for(c, kv) for kv in found)
        return self._holds_for(c, None if c.prefix else self._data.get(c.key))

    def _holds_for(self, c: Compare, kv: KeyValue | None) -> bool:
        if c.target == "value":
            if not isinstance(c.value, bytes):
                raise StoreError(f"compare on value of {c.key} needs bytes, got {c.value!r}")
            # as etcd: a value compare on a missing key is always false
            return kv is not None and _compare(kv.value, c.op, c.value)
        if not isinstance(c.value, int):
            raise StoreError(f"compare on {c.target} of {c.key} needs an int, got {c.value!r}")
        actual = 0
        if kv is not None:
            actual = {
                "version": kv.version,
                "create": kv.create_revision,
                "mod": kv.mod_revision,
                "lease": kv.lease,
            }[c.target]
        return _compare(actual, c.op, c.value)

    def _check_ops(self, ops: Sequence[Op]) -> None:
        """As etcd: a branch may not write the same key twice (puts or overlapping deletes)."""
        puts: set[str] = set()
        deletes: list[Delete] = []
        for op in ops:
            if isinstance(op, Put):
                if op.key in puts:
                    raise StoreError(f"duplicate key given in txn request: {op.key}")
                puts.add(op.key)
            elif isinstance(op, Delete):
                deletes.append(op)
            elif not isinstance(op, Get):
                raise StoreError(f"unknown txn op {op!r}")
        for d in deletes:
            for key in puts:
                if key == d.key or (d.prefix and key.startswith(d.key)):
                    raise StoreError(f"duplicate key given in txn request: {key}")

    def _check_lease(self, lease_id: int) -> None:
        if lease_id:
            self._lease(lease_id)

    def _lease(self, lease_id: int) -> _Lease:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseLost(f"lease {lease_id:x} not found: it expired or was revoked")
        return lease

    def _put(self, key: str, value: bytes, lease: int, rev: int) -> WatchEvent:
        old = self._data.get(key)
        if old is None:
            bisect.insort(self._sorted, key)
            kv = KeyValue(key, value, rev, rev, 1, lease)
        else:
            kv = KeyValue(key, value, old.create_revision, rev, old.version + 1, lease)
            if old.lease and old.lease != lease and old.lease in self._leases:
                self._leases[old.lease].keys.discard(key)
        if lease:
            self._leases[lease].keys.add(key)
        self._data[key] = kv
        self._undo.append((rev, key, old))
        return WatchEvent(EventType.PUT, key, value, rev, old.value if old else None)

    def _delete(self, key: str, rev: int) -> WatchEvent:
        old = self._data.pop(key)
        del self._sorted[bisect.bisect_left(self._sorted, key)]
        if old.lease and old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        self._undo.append((rev, key, old))
        return WatchEvent(EventType.DELETE, key, b"", rev, old.value)

    def _revoke(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id)
        rev = self._rev + 1
        self._commit([self._delete(k, rev) for k in sorted(lease.keys) if k in self._data], rev)

    def _commit(self, events: list[WatchEvent], rev: int) -> None:
        """Record the writes made at ``rev``; a txn that changed nothing keeps the revision."""
        if not events:
            return
        self._rev = rev
        self._events.extend(events)
        if len(self._events) > self._history_limit * 5 // 4:
            cut = self._events[len(self._events) - self._history_limit].mod_revision
            self._compact_to(cut)
        self._notify()

    def _compact_to(self, revision: int) -> None:
        start = bisect.bisect_left(self._events, revision, key=lambda e: e.mod_revision)
        del self._events[:start]
        del self._undo[: bisect.bisect_left(self._undo, revision, key=lambda u: u[0])]
        self._compacted = max(self._compacted, revision - 1)
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _start_reaper(self) -> None:
        if self._background and self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())
        self._lease_added.set()

    async def _reap(self) -> None:
        while not self._closed:
            if not self._leases:
                self._lease_added.clear()
                await self._lease_added.wait()
                continue
            next_due = min(lease.deadline for lease in self._leases.values())
            delay = min(REAPER_PERIOD, max(0.0, next_due - self._clock()))
            await asyncio.sleep(delay)
            self.expire_leases()
