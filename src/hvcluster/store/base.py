"""The store contract: what hvcluster needs of etcd, and what its in-memory twin provides.

Both backends (``memory`` and ``etcd``) pass one contract test suite (tests/store/). The
rules a backend must keep:

* **Revisions.** Every write (put, delete, txn with writes) raises the store's revision by
  one; every key carries the revision that created it (``create_revision``), last changed it
  (``mod_revision``) and how many times it was written since created (``version``). A key
  that does not exist compares as version 0, create and mod revision 0.
* **Compare-and-set.** :meth:`Store.txn` applies its ``success`` ops if every compare holds,
  else its ``failure`` ops, atomically: nobody sees half of it. Ownership writes always go
  through a txn that compares; never read-modify-write without one. A compare on a prefix
  holds when it holds for every key under it (none there: it compares as one missing key),
  so one compare guards any number of keys (:meth:`Compare.unchanged_since`): a txn has at
  most 128 compares and 128 ops in each branch (etcd's ``--max-txn-ops``).
* **Reads of any size.** :meth:`Store.range` returns every key under a prefix, all as of one
  revision, however many and large they are: the backend reads in pages (gRPC refuses a
  message over 4 MiB) at the revision of the first page. A txn of only :class:`Get` ops and
  no compares is such a read too (one revision for all of them). A prefix :class:`Get` in a
  txn that compares or writes is one message: keep those to small prefixes.
* **Leases.** :meth:`Store.grant` gives a lease with a TTL; keys put with it are deleted
  when it expires or is revoked (a watch sees a DELETE for each). :meth:`Store.keepalive`
  renews it and returns the TTL granted; a lease that is gone raises :class:`LeaseLost`
  (etcd answers TTL 0: it is the same thing).
* **Watches.** :meth:`Store.watch` yields every change under a prefix from a revision on, in
  order, each once. The etcd backend re-connects after a connection error and resumes from
  the last revision it delivered + 1, so a caller sees no gap and no duplicate. If the
  revision was compacted away it raises :class:`WatchCompacted` and the caller re-reads.
  The events of one revision are handed on one after another, never suspending between
  them: a consumer that does not await while taking them is never seen by other tasks
  holding half a transaction (what store/cache.WatchedCache rests on).
* **Errors.** Only :class:`~hvcluster.models.errors.StoreError` subclasses leave a backend.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from hvcluster.models.errors import StoreError


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True)
class Range:
    """The keys under a prefix, and the store revision at which they were read."""

    kvs: tuple[KeyValue, ...]
    revision: int


CompareTarget = Literal["version", "create", "mod", "value", "lease"]
CompareOp = Literal["==", "!=", "<", ">"]


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction: ``target`` of ``key`` ``op`` ``value``."""

    key: str
    target: CompareTarget
    op: CompareOp
    value: int | bytes
    prefix: bool = False  # every key under ``key`` (none there: as one missing key)

    @staticmethod
    def unchanged_since(prefix: str, revision: int) -> Compare:
        """No key under ``prefix`` was written after ``revision`` (one compare for all of
        them; a key deleted since is not seen: guard what was decided from what exists)."""
        return Compare(prefix, "mod", "<", revision + 1, prefix=True)

    @staticmethod
    def absent(key: str) -> Compare:
        return Compare(key, "version", "==", 0)

    @staticmethod
    def present(key: str) -> Compare:
        return Compare(key, "version", ">", 0)

    @staticmethod
    def mod_is(key: str, revision: int) -> Compare:
        """The key was last written at ``revision`` (0: it does not exist)."""
        return Compare(key, "mod", "==", revision)

    @staticmethod
    def value_is(key: str, value: bytes) -> Compare:
        return Compare(key, "value", "==", value)


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True)
class Get:
    key: str
    prefix: bool = False


Op = Put | Delete | Get


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    # For each Get in the branch that ran, the keys it found (in op order).
    gets: tuple[tuple[KeyValue, ...], ...] = ()


@dataclass(frozen=True)
class Page:
    """One page of a range read: ``more`` when keys are left after its last."""

    kvs: tuple[KeyValue, ...]
    more: bool
    revision: int  # the revision read at
    next_limit: int = 0  # how many keys the next page should ask for (0: the backend knows)


class EventType(StrEnum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class WatchEvent:
    type: EventType
    key: str
    value: bytes  # empty for a DELETE
    mod_revision: int  # the revision of this change
    prev_value: bytes | None = None


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: float


@dataclass(frozen=True)
class Member:
    name: str
    id: int
    client_urls: tuple[str, ...]
    is_leader: bool = False
    reachable: bool = True
    latency_ms: float | None = None
    db_size: int | None = None
    raft_term: int | None = None
    error: str = ""
    # The leader this member follows, as it says itself: 0 = none (no quorum), None = not
    # asked (unreachable). What an agent's "is it me, or is it etcd?" check needs.
    leader_id: int | None = None
    # Unreachable because its host refused the connection (nothing listens on the port: the
    # member's process is not running, so it cannot vote). A timeout or a TLS failure is not.
    refused: bool = False


@dataclass(frozen=True)
class Membership:
    """An etcd member as the cluster's member list has it (``hvc node join``/``evict``
    manage these; :class:`Member` is the health view)."""

    id: int
    name: str  # empty until the member has started and announced itself
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...] = ()
    learner: bool = False


@dataclass(frozen=True)
class StoreHealth:
    """What ``hvc store check`` shows, and what an agent's "is it me or etcd?" asks."""

    members: tuple[Member, ...] = field(default_factory=tuple)
    leader: str | None = None

    @property
    def reachable(self) -> int:
        return sum(1 for m in self.members if m.reachable)


class WatchCompacted(StoreError):
    """A watch asked for a revision that was compacted away: read again, then watch on."""

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(f"revision compacted; the oldest left is {compact_revision}")


class RevisionCompacted(StoreError):
    """A read asked for a revision that was compacted away."""

    def __init__(self, revision: int, compact_revision: int) -> None:
        self.revision = revision
        self.compact_revision = compact_revision
        oldest = f"; the oldest left is {compact_revision}" if compact_revision else ""
        super().__init__(f"revision {revision} was compacted away{oldest}")


RANGE_ATTEMPTS = 5  # a whole read starts over when compaction overtakes its revision


class Store(abc.ABC):
    """An etcd-shaped key-value store. Keys are str, values bytes."""

    # --- reads -----------------------------------------------------------------------
    @abc.abstractmethod
    async def get(self, key: str) -> KeyValue | None:
        """The key, or None if absent."""

    async def range(self, prefix: str, revision: int = 0) -> Range:
        """Every key starting with ``prefix``, in key order, as of ``revision`` (0: now),
        with the revision read at; any number and size of keys (read in pages, every page
        at the first one's revision). A read whose revision is compacted before its last
        page starts over at a new one (:data:`RANGE_ATTEMPTS` times); a ``revision`` asked
        for that is compacted raises :class:`RevisionCompacted`."""
        for attempt in range(1, RANGE_ATTEMPTS + 1):
            kvs: list[KeyValue] = []
            start, at, limit = prefix, revision, 0
            try:
                while True:
                    page = await self._range_page(prefix, start, at, limit)
                    kvs.extend(page.kvs)
                    at, limit = page.revision, page.next_limit
                    if not page.more or not page.kvs:
                        return Range(tuple(kvs), at)
                    start = page.kvs[-1].key + "\0"
            except RevisionCompacted:
                if revision or attempt == RANGE_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    @abc.abstractmethod
    async def _range_page(self, prefix: str, start: str, revision: int, limit: int) -> Page:
        """The keys under ``prefix`` from ``start`` on (inclusive), as of ``revision`` (0:
        now), one page of them (``limit``: the previous page's ``next_limit``; 0 for the
        first), and the revision read at."""

    @abc.abstractmethod
    async def revision(self) -> int:
        """The store's current revision."""

    # --- writes (each raises the revision by one) ------------------------------------
    @abc.abstractmethod
    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write ``key`` (bound to ``lease`` if non-zero); return the new revision."""

    @abc.abstractmethod
    async def delete(self, key: str, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it); return how many keys went."""

    @abc.abstractmethod
    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """Atomically: if every compare holds run ``success``, else ``failure``."""

    # --- leases ----------------------------------------------------------------------
    @abc.abstractmethod
    async def grant(self, ttl: float) -> Lease:
        """A new lease. etcd counts TTLs in whole seconds: it is rounded up there."""

    @abc.abstractmethod
    async def keepalive(self, lease_id: int, timeout: float | None = None) -> float:
        """Renew once; return the TTL now granted. Raise :class:`LeaseLost` if it is gone.
        ``timeout``: give up after that long (default: the store's own timeout); a store
        with several endpoints then asks the next one next time: one silent etcd member
        (frozen, or cut off) must not stall every keepalive of the node."""

    @abc.abstractmethod
    async def revoke(self, lease_id: int) -> None:
        """End the lease at once, deleting its keys. A lease already gone is not an error."""

    @abc.abstractmethod
    async def lease_ttl(self, lease_id: int) -> float:
        """Seconds the lease has left, or raise :class:`LeaseLost`."""

    # --- watches ---------------------------------------------------------------------
    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Every change under ``prefix`` from ``start_revision`` (inclusive), in order,
        each exactly once, across re-connects. Runs until the caller stops iterating."""

    # --- the store itself ------------------------------------------------------------
    @abc.abstractmethod
    async def health(self) -> StoreHealth:
        """Members, leader, latency: what ``hvc store check`` shows."""

    # --- membership (hvc node join/evict) -------------------------------------------
    @abc.abstractmethod
    async def members(self) -> tuple[Membership, ...]:
        """The store's members, learners included."""

    @abc.abstractmethod
    async def add_member(self, peer_urls: Sequence[str], learner: bool = True) -> Membership:
        """Add a member (a learner by default: it votes only once promoted, so a member that
        never starts cannot cost the cluster its quorum). etcd's "unhealthy cluster" refusal
        (just after a promotion: the host before it joined a moment ago) is asked again for
        a while before it is raised."""

    @abc.abstractmethod
    async def promote_member(self, member_id: int) -> None:
        """Make a learner a voting member; refused (:class:`StoreError`) until it has caught
        up with the leader."""

    @abc.abstractmethod
    async def remove_member(self, member_id: int) -> None:
        """Remove a member (:class:`~hvcluster.models.errors.NotFound` if there is none).
        etcd's "unhealthy cluster" refusal (the members left not yet connected long enough)
        is asked again for a while before it is raised."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and background tasks."""

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
