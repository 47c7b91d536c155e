"""A watched cache of whole prefixes: read once, then kept current by a watch.

A loop that needs every VM, placement and status each cycle (the controller: 8,000 VMs at
scale) should not read them all every cycle. :class:`WatchedCache` reads the prefixes it is
given once, all at one revision R (:meth:`~hvcluster.store.base.Store.range` at R), then
watches from R + 1 and applies each change, decoding only the values that changed (a
corrupt one reported once per stored version, through the same
:class:`~hvcluster.store.reads.CorruptReporter` as every read). :meth:`WatchedCache.read`
hands out the same typed :class:`~hvcluster.store.reads.Decoded` values as
:func:`~hvcluster.store.reads.read_prefix`, at a known revision.

* **Current, not merely recent.** A read first asks the store its revision S, then waits
  until the watch has handed on every change up to S and applies them: what it returns is
  the store as of S or later, so it includes every write that finished before the read
  began (the caller's own last writes too). The watch covers every key, not only those
  cached: every revision of the store is a write of some key, so "the watch reached S" is
  exact; a key outside the cached prefixes costs a string compare.
* **Whole revisions.** The watch hands on a revision's events one after another without
  suspending between them (the store contract, store/base.py), and the watch task only
  appends them to a list: a reader, which runs only while that task is suspended, never
  sees part of a transaction.
* **Lost watch, compaction.** A watch that breaks (``WatchCompacted``: "required revision
  has been compacted", or any other store error), or that does not reach S within
  :data:`STALL_S` (on the caller's clock: a simulation's virtual one), is replaced:
  everything is read again at a new revision (values whose bytes and revision did not
  change are kept, not decoded again) and the watch resumes
  after it. :meth:`WatchedCache.suspend` stops the watch (a controller that stops leading);
  the next read resumes it from where it stopped, or reads again if that was compacted.
* **Stale is safe.** Every write decided from what is read here compares (CAS) the keys it
  was decided from (their mod revision or value) in its transaction, as the plain reads'
  callers do: a cache that is behind can make such a transaction fail, and the next cycle
  decide again; it can never make a wrong write. Keep that property in any new caller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hvcluster.models.base import Model
from hvcluster.models.errors import CorruptValue, StoreError
from hvcluster.store.base import EventType, KeyValue, RevisionCompacted, Store, WatchEvent
from hvcluster.store.clock import Now
from hvcluster.store.reads import LOG_ONCE, CorruptReporter, Decoded, Entry, Stored, decode_one
from hvcluster.tasks import Sleep, cancel_all, wait_event

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Model)

STALL_S = 2.0  # a watch that has not reached the store's revision by then is replaced
# Changes held for the next read at most: a cache nobody reads any more (its loop stopped
# without closing it) stops watching rather than growing; a later read reads everything.
MAX_PENDING = 100_000
REREAD_ATTEMPTS = 5  # a whole read starts over when compaction overtakes its revision


@dataclass
class _Prefix:
    """What is kept of one prefix (or, for a prefix not ending in ``/``, one key)."""

    model: type[Model]
    items: dict[str, Stored[Any]] = field(default_factory=dict)
    corrupt: dict[str, CorruptValue] = field(default_factory=dict)

    def decoded(self) -> Decoded[Any]:
        """A copy: the caller may hold it across awaits while the cache moves on."""
        return Decoded(
            dict(self.items), set(self.items) | set(self.corrupt), list(self.corrupt.values())
        )


@dataclass(frozen=True)
class CacheView:
    """What one :meth:`WatchedCache.read` found: the store as of ``revision``."""

    revision: int
    kinds: Mapping[str, Decoded[Any]]
    models: Mapping[str, type[Model]]

    def decoded(self, prefix: str, model: type[M]) -> Decoded[M]:
        """The values under ``prefix`` (one the cache was given) by the key after it; for a
        single key, by the name ``""``."""
        if self.models.get(prefix) is not model:
            raise KeyError(f"the cache keeps no {model.__name__} under {prefix!r}")
        found: Decoded[M] = self.kinds[prefix]
        return found


class WatchedCache:
    """The values under ``prefixes`` (prefix -> model), read once and then watched: see the
    module's docstring for what a read guarantees and why a stale one is safe."""

    def __init__(
        self,
        store: Store,
        prefixes: Mapping[str, type[Model]],
        report: CorruptReporter = LOG_ONCE,
        stall_s: float = STALL_S,
        now: Now = time.monotonic,
        sleep: Sleep | None = None,
        max_pending: int = MAX_PENDING,
    ) -> None:
        """``now`` and ``sleep``: the clock ``stall_s`` is measured on (real by default)."""
        self._store, self._report, self._stall_s = store, report, stall_s
        self._now, self._sleep = now, sleep
        self._max_pending = max_pending
        self._kept = {prefix: _Prefix(model) for prefix, model in prefixes.items()}
        self._models = dict(prefixes)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._pending: list[WatchEvent] = []
        self._delivered = 0  # the revision of the last event the watch handed on
        self._lost: StoreError | None = None
        self._arrived = asyncio.Event()
        self.revision = 0  # the store revision the kept values are exact at (0: never read)
        self.rereads = 0  # whole reads (the first, then one per lost watch): for tests, benches
        self.decoded = 0  # values decoded

    async def read(self) -> CacheView:
        """Every kept value, as of the store's revision when called or later."""
        async with self._lock:
            if self.revision == 0:
                await self._reread()
            elif self._task is None:
                self._watch_from(self._delivered + 1)
            target = await self._store.revision()
            deadline = self._now() + self._stall_s
            while self._lost is not None or self._delivered < target:
                if self._lost is not None:
                    log.warning("cache watch lost (%s): reading everything again", self._lost)
                    await self._reread()
                    continue
                left = deadline - self._now()
                if left <= 0:
                    log.warning(
                        "cache watch at revision %s, not %s, after %ss: reading everything again",
                        self._delivered,
                        target,
                        self._stall_s,
                    )
                    await self._reread()
                    continue
                self._arrived.clear()
                await wait_event(self._arrived, left, self._sleep)
            await self._apply_pending()
            self.revision = max(self.revision, target)
            kinds = {prefix: kept.decoded() for prefix, kept in self._kept.items()}
            return CacheView(self.revision, kinds, self._models)

    async def suspend(self) -> None:
        """Stop watching, keeping what is known; the next read resumes the watch after it."""
        async with self._lock:
            await self._stop_watch()

    async def close(self) -> None:
        """Stop watching and forget everything: the next read reads it all again."""
        async with self._lock:
            await self._stop_watch()
            self._pending.clear()
            for kept in self._kept.values():
                kept.items.clear()
                kept.corrupt.clear()
            self.revision = self._delivered = 0

    def cancel(self) -> None:
        """Stop watching without waiting for it (for a caller that cannot await); what is
        kept stays, as after :meth:`suspend`."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    # --- inside ------------------------------------------------------------------------
    async def _reread(self) -> None:
        """Every prefix again at one revision, then the watch from the one after."""
        await self._stop_watch()
        self._pending.clear()
        self.rereads += 1
        for attempt in range(1, REREAD_ATTEMPTS + 1):
            try:
                found, at = await self._range_all()
                break
            except RevisionCompacted:
                if attempt == REREAD_ATTEMPTS:
                    raise
        for prefix, kept in self._kept.items():
            await self._replace(prefix, kept, found[prefix])
        self.revision = self._delivered = at
        self._watch_from(at + 1)

    async def _range_all(self) -> tuple[dict[str, tuple[KeyValue, ...]], int]:
        found: dict[str, tuple[KeyValue, ...]] = {}
        at = 0
        for prefix in self._kept:
            result = await self._store.range(prefix, at)
            at = result.revision
            exact = not prefix.endswith("/")
            found[prefix] = tuple(kv for kv in result.kvs if not exact or kv.key == prefix)
        return found, at

    async def _replace(self, prefix: str, kept: _Prefix, kvs: tuple[KeyValue, ...]) -> None:
        """``kept`` made what ``kvs`` holds, decoding only what it did not hold already."""
        before, kept.items, kept.corrupt = kept.items, {}, {}
        for kv in kvs:
            known = before.get(kv.key[len(prefix) :])
            if (
                known is not None
                and known.mod_revision == kv.mod_revision
                and known.raw == kv.value
            ):
                kept.items[kv.key[len(prefix) :]] = known
            else:
                await self._decode(prefix, kept, kv)

    def _watch_from(self, start: int) -> None:
        self._lost = None
        self._task = asyncio.get_running_loop().create_task(self._follow(start), name="cache-watch")

    async def _follow(self, start: int) -> None:
        """Hand each change on to the next read; never awaits between a revision's events."""
        try:
            async for event in self._store.watch("", start):
                self._pending.append(event)
                self._delivered = event.mod_revision
                self._arrived.set()
                if len(self._pending) > self._max_pending:
                    self._pending.clear()  # (read again instead: see MAX_PENDING)
                    raise StoreError(f"over {self._max_pending} changes held and not read")
        except StoreError as e:
            self._lost = e
            self._arrived.set()

    async def _stop_watch(self) -> None:
        if self._task is not None:
            await cancel_all([self._task])
            self._task = None

    async def _apply_pending(self) -> None:
        events, self._pending = self._pending, []
        for event in events:
            for prefix, kept in self._kept.items():
                if prefix.endswith("/"):
                    if not event.key.startswith(prefix):
                        continue
                elif event.key != prefix:
                    continue
                if event.type is EventType.DELETE:
                    name = event.key[len(prefix) :]
                    kept.items.pop(name, None)
                    kept.corrupt.pop(name, None)
                else:
                    await self._decode(prefix, kept, event)
            self.revision = max(self.revision, event.mod_revision)

    async def _decode(self, prefix: str, kept: _Prefix, kv: Entry) -> None:
        name = kv.key[len(prefix) :]
        kept.items.pop(name, None)
        kept.corrupt.pop(name, None)
        self.decoded += 1
        found = await decode_one(kept.model, kv, self._report)
        if isinstance(found, CorruptValue):
            kept.corrupt[name] = found
        elif found is not None:
            kept.items[name] = found
