"""The etcd backend of the store contract (etcd v3 API, through ``aetcd``'s gRPC stubs).

* Every call has a deadline (``timeout``, 5 s by default) and fails over to the next endpoint
  on a connection error. A write that may have reached etcd is not retried: its outcome is
  unknown, so it raises :class:`StoreUnavailable` and the caller re-reads.
* :meth:`EtcdStore.keepalive` sends one keepalive and reads one answer; TTL 0 in the answer
  means the lease is gone (:class:`LeaseLost`). :class:`~hvcluster.store.lease.LeaseKeeper`
  runs the loop.
* A watch is one gRPC stream of its own, resumed after any interruption with no gap and no
  duplicate (:mod:`hvcluster.store.etcd_watch`).
* gRPC refuses a message over 4 MiB, so a range is read in pages (``limit``, then on from
  the last key, every page at the first one's revision) of about :data:`PAGE_BYTES`; a page
  still too large is read again at half the keys. A txn of only Gets is read the same way,
  all at one revision.
* TTLs are whole seconds in etcd: a TTL is rounded up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
from aetcd import rpc

from hvcluster.metrics import AgentMetrics
from hvcluster.models.errors import LeaseLost, StoreError
from hvcluster.store import etcd_health, etcd_members
from hvcluster.store.base import (
    RANGE_ATTEMPTS,
    Compare,
    Delete,
    Get,
    KeyValue,
    Lease,
    Membership,
    Op,
    Page,
    Put,
    RevisionCompacted,
    Store,
    StoreHealth,
    TxnResult,
    WatchEvent,
)
from hvcluster.store.etcd_conn import (
    Connection,
    Endpoint,
    EtcdTls,
)
from hvcluster.store.etcd_watch import watch

log = logging.getLogger(__name__)

_TARGETS = {
    "version": rpc.Compare.VERSION,
    "create": rpc.Compare.CREATE,
    "mod": rpc.Compare.MOD,
    "value": rpc.Compare.VALUE,
    "lease": rpc.Compare.LEASE,
}
_RESULTS = {
    "==": rpc.Compare.EQUAL,
    "!=": rpc.Compare.NOT_EQUAL,
    "<": rpc.Compare.LESS,
    ">": rpc.Compare.GREATER,
}
_INT_FIELDS = {"version": "version", "create": "create_revision", "mod": "mod_revision"}
# A page of a range aims at this many bytes (gRPC's limit is 4 MiB), starting at
# FIRST_PAGE keys and sized from the keys seen so far; never more than MAX_PAGE keys.
PAGE_BYTES = 1 << 20
FIRST_PAGE = 128
MAX_PAGE = 2000


class _TooLarge(Exception):
    """The answer exceeded the gRPC message limit (RESOURCE_EXHAUSTED)."""


def _span(prefix: str, is_prefix: bool = True) -> tuple[bytes, bytes]:
    """etcd's [key, range_end) for a prefix; the empty prefix means every key."""
    key = prefix.encode()
    if not is_prefix:
        return key, b""
    if not key:
        return b"\0", b"\0"
    end = bytearray(key)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return key, bytes(end[: i + 1])
    return key, b"\0"


def _kv(kv: Any) -> KeyValue:
    return KeyValue(
        kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease
    )


def _compare(c: Compare) -> Any:
    if c.target not in _TARGETS or c.op not in _RESULTS:
        raise StoreError(f"unknown compare {c.target} {c.op} on {c.key}")
    key, end = _span(c.key, c.prefix)
    msg = rpc.Compare(key=key, range_end=end, target=_TARGETS[c.target], result=_RESULTS[c.op])
    if c.target == "value":
        if not isinstance(c.value, bytes):
            raise StoreError(f"compare on value of {c.key} needs bytes, got {c.value!r}")
        msg.value = c.value
    else:
        if not isinstance(c.value, int):
            raise StoreError(f"compare on {c.target} of {c.key} needs an int, got {c.value!r}")
        setattr(msg, _INT_FIELDS.get(c.target, "lease"), c.value)
    return msg


def _request_op(op: Op) -> Any:
    if isinstance(op, Put):
        return rpc.RequestOp(
            request_put=rpc.PutRequest(key=op.key.encode(), value=op.value, lease=op.lease)
        )
    if isinstance(op, Delete):
        key, end = _span(op.key, op.prefix)
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=end))
    if isinstance(op, Get):
        key, end = _span(op.key, op.prefix)
        return rpc.RequestOp(request_range=rpc.RangeRequest(key=key, range_end=end))
    raise StoreError(f"unknown txn op {op!r}")


def _reading(error: grpc.aio.AioRpcError, revision: int) -> Exception | None:
    """A read's gRPC error as what the paging loop acts on (None: any other)."""
    details = error.details() or ""
    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return _TooLarge(details)
    if "required revision has been compacted" in details:
        return RevisionCompacted(revision, 0)
    return None


def _page_limit(kvs: Sequence[Any]) -> int:
    """How many keys the next page should ask for, from the sizes of ``kvs``."""
    size = sum(len(kv.key) + len(kv.value) for kv in kvs) // max(len(kvs), 1)
    return max(1, min(MAX_PAGE, PAGE_BYTES // max(size, 1)))


class EtcdStore(Store):
    """The store contract on a real etcd cluster."""

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        timeout: float = 5.0,
        tls: EtcdTls | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        """``metrics``: the agent's, told how long each request took."""
        observe = metrics.etcd_request if metrics is not None else None
        self._conn = Connection(endpoints, timeout, tls, observe)

    @property
    def endpoints(self) -> list[str]:
        return [ep.target for ep in self._conn.endpoints]

    # --- reads -----------------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        request = rpc.RangeRequest(key=key.encode())

        async def call(ep: Endpoint, left: float) -> Any:
            return await ep.stub("kv").Range(request, timeout=left)

        response = await self._conn.call(f"get {key}", call, op="get", mutable=False)
        return _kv(response.kvs[0]) if response.kvs else None

    async def _range_page(self, prefix: str, start: str, revision: int, limit: int) -> Page:
        _, end = _span(prefix)
        limit = limit or FIRST_PAGE
        while True:
            request = rpc.RangeRequest(
                key=start.encode(), range_end=end, limit=limit, revision=revision
            )
            try:
                response = await self._read(f"range {prefix}", request, revision)
            except _TooLarge:
                if limit == 1:
                    raise StoreError(
                        f"range {prefix}: the key at {start!r} alone exceeds gRPC's message limit"
                    ) from None
                limit = max(1, limit // 2)
                continue
            return Page(
                tuple(_kv(kv) for kv in response.kvs),
                bool(response.more),
                revision or int(response.header.revision),
                _page_limit(response.kvs) if response.kvs else limit,
            )

    async def _read(self, what: str, request: Any, revision: int) -> Any:
        """One Range call; a too large answer raises :class:`_TooLarge`, a compacted
        ``revision`` :class:`RevisionCompacted`."""

        async def call(ep: Endpoint, left: float) -> Any:
            try:
                return await ep.stub("kv").Range(request, timeout=left)
            except grpc.aio.AioRpcError as e:
                mine = _reading(e, revision)
                if mine is None:
                    raise
                raise mine from None

        return await self._conn.call(what, call, op="range", mutable=False)

    async def _read_all(self, gets: Sequence[Get]) -> TxnResult:
        """A txn of only Gets, each read whole (in pages), all at one revision: that of the
        first read. Starts over when compaction overtakes that revision."""
        for attempt in range(1, RANGE_ATTEMPTS + 1):
            try:
                first, revision = await self._get_at(gets[0], 0)
                rest = await asyncio.gather(*(self._get_at(g, revision) for g in gets[1:]))
                return TxnResult(True, revision, (first, *(kvs for kvs, _ in rest)))
            except RevisionCompacted:
                if attempt == RANGE_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def _get_at(self, op: Get, revision: int) -> tuple[tuple[KeyValue, ...], int]:
        if op.prefix:
            found = await self.range(op.key, revision)
            return found.kvs, found.revision
        request = rpc.RangeRequest(key=op.key.encode(), revision=revision)
        response = await self._read(f"get {op.key}", request, revision)
        return tuple(_kv(kv) for kv in response.kvs), revision or int(response.header.revision)

    async def revision(self) -> int:
        request = rpc.RangeRequest(key=b"\0", count_only=True)

        async def call(ep: Endpoint, left: float) -> Any:
            return await ep.stub("kv").Range(request, timeout=left)

        response = await self._conn.call("revision", call, op="revision", mutable=False)
        return int(response.header.revision)

    # --- writes ----------------------------------------------------------------------
    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        request = rpc.PutRequest(key=key.encode(), value=value, lease=lease)

        async def call(ep: Endpoint, left: float) -> Any:
            return await ep.stub("kv").Put(request, timeout=left)

        response = await self._conn.call(f"put {key}", call, op="put", mutable=True)
        return int(response.header.revision)

    async def delete(self, key: str, prefix: bool = False) -> int:
        start, end = _span(key, prefix)
        request = rpc.DeleteRangeRequest(key=start, range_end=end)

        async def call(ep: Endpoint, left: float) -> Any:
            return await ep.stub("kv").DeleteRange(request, timeout=left)

        response = await self._conn.call(f"delete {key}", call, op="delete", mutable=True)
        return int(response.deleted)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        reads = [op for op in success if isinstance(op, Get)]
        read_only = not compares and not failure and reads and len(reads) == len(success)
        if read_only and any(op.prefix for op in reads):
            return await self._read_all(reads)
        request = rpc.TxnRequest(
            compare=[_compare(c) for c in compares],
            success=[_request_op(op) for op in success],
            failure=[_request_op(op) for op in failure],
        )

        async def call(ep: Endpoint, left: float) -> Any:
            try:
                return await ep.stub("kv").Txn(request, timeout=left)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise _TooLarge(e.details() or "") from None
                raise

        try:
            response = await self._conn.call("txn", call, op="txn", mutable=not read_only)
        except _TooLarge as e:
            if read_only:
                return await self._read_all(reads)
            raise StoreError(
                f"the answer to a txn exceeds gRPC's message limit ({e}); it may have been "
                "applied: Gets of large prefixes belong in range(), not in a txn that writes"
            ) from None
        gets = tuple(
            tuple(_kv(kv) for kv in r.response_range.kvs)
            for r in response.responses
            if r.WhichOneof("response") == "response_range"
        )
        return TxnResult(bool(response.succeeded), int(response.header.revision), gets)

    async def compact(self, revision: int) -> None:
        """Forget the change history before ``revision`` (etcd's compaction)."""
        request = rpc.CompactionRequest(revision=revision, physical=True)

        async def call(ep: Endpoint, left: float) -> Any:
            return await ep.stub("kv").Compact(request, timeout=left)

        await self._conn.call(f"compact {revision}", call, op="compact", mutable=True)

    # --- leases ----------------------------------------------------------------------
    async def grant(self, ttl: float) -> Lease:
        if ttl <= 0:
            raise StoreError(f"lease ttl must be positive, got {ttl}")
        request = rpc.LeaseGrantRequest(TTL=math.ceil(ttl), ID=0)

        async def call(ep: Endpoint, left: float) -> Any:
            return await ep.stub("lease").LeaseGrant(request, timeout=left)

        response = await self._conn.call("lease grant", call, op="lease_grant", mutable=True)
        if response.error:
            raise StoreError(f"etcd refused a lease of {ttl}s: {response.error}")
        return Lease(int(response.ID), float(response.TTL))

    async def keepalive(self, lease_id: int, timeout: float | None = None) -> float:
        request = rpc.LeaseKeepAliveRequest(ID=lease_id)

        async def call(ep: Endpoint, left: float) -> Any:
            stream = ep.stub("lease").LeaseKeepAlive(timeout=left)
            try:
                await stream.write(request)
                await stream.done_writing()
                return await stream.read()
            finally:
                stream.cancel()

        response = await self._conn.call(
            f"keepalive {lease_id:x}",
            call,
            op="keepalive",
            mutable=False,
            timeout=timeout,
            fresh=True,
        )
        if response is grpc.aio.EOF or response.TTL <= 0:
            raise LeaseLost(f"lease {lease_id:x} is gone: it expired or was revoked")
        return float(response.TTL)

    async def revoke(self, lease_id: int) -> None:
        request = rpc.LeaseRevokeRequest(ID=lease_id)

        async def call(ep: Endpoint, left: float) -> Any:
            return await ep.stub("lease").LeaseRevoke(request, timeout=left)

        with contextlib.suppress(LeaseLost):  # already gone: that is what was asked
            await self._conn.call(f"revoke {lease_id:x}", call, op="lease_revoke", mutable=False)

    async def lease_ttl(self, lease_id: int) -> float:
        request = rpc.LeaseTimeToLiveRequest(ID=lease_id, keys=False)

        async def call(ep: Endpoint, left: float) -> Any:
            return await ep.stub("lease").LeaseTimeToLive(request, timeout=left)

        response = await self._conn.call(
            f"lease ttl {lease_id:x}", call, op="lease_ttl", mutable=False
        )
        if response.TTL < 0:
            raise LeaseLost(f"lease {lease_id:x} is gone: it expired or was revoked")
        return float(response.TTL)

    # --- watches ---------------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        key, end = _span(prefix)
        return watch(self._conn, prefix, (key, end), start_revision)  # etcd_watch.py

    # --- the store itself ------------------------------------------------------------
    async def health(self, timeout: float | None = None) -> StoreHealth:
        """Ask every member for its status (in parallel, each within ``timeout``)."""
        return await etcd_health.health(self._conn, timeout)  # etcd_health.py

    async def members(self) -> tuple[Membership, ...]:
        return await etcd_members.members(self._conn)

    async def add_member(self, peer_urls: Sequence[str], learner: bool = True) -> Membership:
        return await etcd_members.add(self._conn, peer_urls, learner)

    async def promote_member(self, member_id: int) -> None:
        await etcd_members.promote(self._conn, member_id)

    async def remove_member(self, member_id: int) -> None:
        await etcd_members.remove(self._conn, member_id)

    async def close(self) -> None:
        await self._conn.close()
