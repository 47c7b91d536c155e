"""The cluster log: events under ``events/<seq>``, numbered in order, bounded in size.

* :meth:`EventLog.append` takes the next sequence number by compare-and-set on a counter and
  writes the event in the same transaction, so numbers are unique, rising and without holes;
  :meth:`EventLog.append_all` takes the next several numbers for many events at once.
  The counter is the key of sequence 0 (``events/000…0``), which no event ever uses; a
  counter that is corrupt or behind is reported and the log goes on after its newest event.
* Retention: whoever appends a multiple of ``batch`` also deletes the ``batch`` events that
  fell out of the newest ``retention`` (one transaction); :meth:`EventLog.trim` (run by the
  leader now and then) sweeps whatever an appender that died may have left, and events
  older than an age.
* A value that does not decode is reported (log, :attr:`EventLog.corrupt`, ``on_corrupt``)
  and skipped; it never ends a read or a follow.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from hvcluster.models.base import decode, encode
from hvcluster.models.errors import CorruptValue, StoreError
from hvcluster.models.event import Event
from hvcluster.store.base import Compare, Delete, EventType, Get, Put, Store
from hvcluster.store.keys import Keys

log = logging.getLogger(__name__)

MAX_TXN_OPS = 100  # etcd refuses transactions of more than 128 operations
MAX_BYTES = 1024 * 1024  # events per transaction: under etcd's 1.5 MiB request


@dataclass(frozen=True)
class LoggedEvent:
    seq: int
    revision: int  # the store revision that wrote it
    event: Event


class EventLog:
    """Append to, read and follow the cluster log of one cluster."""

    def __init__(
        self,
        store: Store,
        keys: Keys | None = None,
        retention: int = 10_000,
        batch: int = 100,
        on_corrupt: Callable[[CorruptValue], object] | None = None,
    ) -> None:
        if retention < 1 or not 1 <= batch <= MAX_TXN_OPS:
            raise ValueError(f"retention must be >= 1 and batch in 1..{MAX_TXN_OPS}")
        self.store = store
        self.keys = keys or Keys()
        self.prefix = self.keys.prefix("events")
        self.counter = self.keys.event(0)
        self.retention = retention
        self.batch = batch
        self._on_corrupt = on_corrupt
        #: How many corrupt values this log has skipped.
        self.corrupt = 0

    async def append(self, event: Event) -> int:
        """Write ``event`` as the next in sequence; return its sequence number."""
        return (await self.append_all([event]))[0]

    async def append_all(self, events: Sequence[Event]) -> list[int]:
        """Write ``events`` as the next in sequence, in their order, as many to a
        transaction as etcd takes (a cycle's 125 decisions in 2 writes, not 125); return
        their sequence numbers. Each transaction's events have consecutive numbers; another
        writer's may come between two transactions."""
        values = [encode(e) for e in events]
        seqs: list[int] = []
        start = 0
        while start < len(values):
            end, size = start, 0
            while end < len(values) and end - start < MAX_TXN_OPS - 1:
                size += len(values[end])
                if end > start and size > MAX_BYTES:
                    break
                end += 1
            seqs += await self._append_run(values[start:end])
            start = end
        return seqs

    async def _append_run(self, values: Sequence[bytes]) -> list[int]:
        """Write ``values`` as the next events, with consecutive numbers, in one
        transaction; then forget what fell out of the retention."""
        current = await self.store.get(self.counter)
        last = await self._last(current.value if current else None)
        while True:
            seqs = range(last + 1, last + 1 + len(values))
            mod = current.mod_revision if current else 0
            result = await self.store.txn(
                [Compare.mod_is(self.counter, mod)]
                + [Compare.absent(self.keys.event(seq)) for seq in seqs],
                [Put(self.counter, str(seqs[-1]).encode())]
                + [Put(self.keys.event(seq), v) for seq, v in zip(seqs, values, strict=True)],
                [Get(self.counter)],
            )
            if result.succeeded:
                break
            new = result.gets[0][0] if result.gets and result.gets[0] else None
            if (new.mod_revision if new else 0) == mod:
                # The counter did not move but an event key exists: the counter is behind
                # (it was corrupt or lost). Continue after the newest event there is.
                last = await self._scan_last()
            else:
                current = new
                last = await self._last(new.value if new else None)
        for seq in seqs:  # each multiple of batch passed: its batch that fell out goes
            if seq % self.batch == 0 and seq > self.retention:
                await self._forget(
                    range(max(1, seq - self.retention - self.batch + 1), seq - self.retention + 1)
                )
        return list(seqs)

    async def last_seq(self) -> int:
        """The sequence number of the newest event appended (0: none yet)."""
        current = await self.store.get(self.counter)
        return await self._last(current.value if current else None)

    async def recent(self, n: int = 50) -> list[LoggedEvent]:
        """The newest ``n`` events (fewer if the log is shorter), oldest first."""
        if n <= 0:
            return []
        last = await self.last_seq()
        seqs = list(range(max(1, last - n + 1), last + 1))
        found: list[LoggedEvent] = []
        for i in range(0, len(seqs), MAX_TXN_OPS):
            chunk = seqs[i : i + MAX_TXN_OPS]
            result = await self.store.txn([], [Get(self.keys.event(s)) for s in chunk])
            for seq, kvs in zip(chunk, result.gets, strict=True):
                if kvs and (event := self._decode(kvs[0].key, kvs[0].value)) is not None:
                    found.append(LoggedEvent(seq, kvs[0].mod_revision, event))
        return found

    async def follow(self, from_revision: int = 0) -> AsyncIterator[LoggedEvent]:
        """Every event appended from ``from_revision`` on (0: from now), as it comes."""
        async for ev in self.store.watch(self.prefix, from_revision):
            if ev.type != EventType.PUT or ev.key == self.counter:
                continue
            seq = self._seq_of_key(ev.key)
            if seq is None:
                continue
            event = self._decode(ev.key, ev.value)
            if event is not None:
                yield LoggedEvent(seq, ev.mod_revision, event)

    async def trim(self, max_age_s: float | None = None, now: float | None = None) -> int:
        """Delete every event but the newest ``retention`` and, given ``max_age_s``, every
        one whose time is more than that before ``now``; return how many went. (A value
        that does not decode goes by count only.)"""
        r = await self.store.range(self.prefix)
        found = sorted((s, kv.value) for kv in r.kvs if (s := self._seq_of_key(kv.key)))
        keep_from = max(0, len(found) - self.retention)
        old = [seq for seq, _ in found[:keep_from]]
        if max_age_s is not None:
            cutoff = (time.time() if now is None else now) - max_age_s
            old += [seq for seq, raw in found[keep_from:] if _written(raw) < cutoff]
        return await self._forget(old)

    # --- internals -------------------------------------------------------------------
    async def _forget(self, seqs: range | list[int]) -> int:
        seqs, gone = list(seqs), 0
        for i in range(0, len(seqs), MAX_TXN_OPS):
            ops = [Delete(self.keys.event(s)) for s in seqs[i : i + MAX_TXN_OPS]]
            try:
                await self.store.txn([], ops)
            except StoreError as e:  # retention is housekeeping: never fail an append for it
                log.warning("could not trim the event log: %s", e)
                break
            gone += len(ops)
        return gone

    async def _last(self, counter: bytes | None) -> int:
        if counter is None:
            return 0
        try:
            return int(counter)
        except ValueError:
            self._report(CorruptValue(self.counter, f"not a sequence number: {counter[:40]!r}"))
            return await self._scan_last()

    async def _scan_last(self) -> int:
        r = await self.store.range(self.prefix)
        return max((s for kv in r.kvs if (s := self._seq_of_key(kv.key))), default=0)

    def _seq_of_key(self, key: str) -> int | None:
        tail = key[len(self.prefix) :]
        return int(tail) if tail.isdigit() and int(tail) > 0 else None

    def _decode(self, key: str, raw: bytes) -> Event | None:
        try:
            return decode(Event, key, raw)
        except CorruptValue as e:
            self._report(e)
            return None

    def _report(self, error: CorruptValue) -> None:
        self.corrupt += 1
        log.warning("skipped: %s", error)
        if self._on_corrupt is not None:
            self._on_corrupt(error)


def _written(raw: bytes) -> float:
    """When an event was written (inf for one that does not decode: kept by age)."""
    try:
        return decode(Event, "", raw).time
    except CorruptValue:
        return math.inf
