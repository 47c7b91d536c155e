"""The store contract: what hvcluster needs of etcd, and what its in-memory twin provides.

Both backends (``memory`` and ``etcd``) pass one contract test suite (tests/store/). The
rules a backend must keep:

* **Revisions.** Every write (put, delete, txn with writes) raises the store's revision by
  one; every key carries the revision that created it (``create_revision``), last changed it
  (``mod_revision``) and how many times it was written since created (``version``). A key
  that does not exist compares as version 0, create and mod revision 0.
* **Compare-and-set.** :meth:`Store.txn` applies its ``success`` ops if every compare holds,
  else its ``failure`` ops, atomically: nobody sees half of it. Ownership writes always go
  through a txn that compares; never read-modify-write without one.
* **Leases.** :meth:`Store.grant` gives a lease with a TTL; keys put with it are deleted
  when it expires or is revoked (a watch sees a DELETE for each). :meth:`Store.keepalive`
  renews it and returns the TTL granted; a lease that is gone raises :class:`LeaseLost`
  (etcd answers TTL 0: it is the same thing).
* **Watches.** :meth:`Store.watch` yields every change under a prefix from a revision on, in
  order, each once. The etcd backend re-connects after a connection error and resumes from
  the last revision it delivered + 1, so a caller sees no gap and no duplicate. If the
  revision was compacted away it raises :class:`WatchCompacted` and the caller re-reads.
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


class Store(abc.ABC):
    """An etcd-shaped key-value store. Keys are str, values bytes."""

    # --- reads -----------------------------------------------------------------------
    @abc.abstractmethod
    async def get(self, key: str) -> KeyValue | None:
        """The key, or None if absent."""

    @abc.abstractmethod
    async def range(self, prefix: str) -> Range:
        """Every key starting with ``prefix``, in key order, with the revision read at."""

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
    async def keepalive(self, lease_id: int) -> float:
        """Renew once; return the TTL now granted. Raise :class:`LeaseLost` if it is gone."""

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

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and background tasks."""

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
