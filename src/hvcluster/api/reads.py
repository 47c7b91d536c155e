"""Reading the store for the API: one consistent snapshot per answer, corrupt values skipped.

A value that does not decode never fails a list: it is left out, named in the answer's
``skipped`` and written to the cluster log once per stored version (so a dashboard polling
the list does not flood the log).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from hvcluster.api.views import Skipped
from hvcluster.models.base import Model, decode
from hvcluster.models.errors import CorruptValue
from hvcluster.store.base import Get, KeyValue, Store
from hvcluster.store.keys import Keys

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Model)


@dataclass
class Snapshot:
    """The keys under some prefixes, all read at one revision (one transaction)."""

    revision: int
    by_kind: dict[str, tuple[KeyValue, ...]]
    single: dict[str, KeyValue | None] = field(default_factory=dict)


@dataclass
class Decoded(Generic[M]):
    """Objects by name, with the KeyValue each came from; what did not decode, skipped."""

    items: dict[str, tuple[M, KeyValue]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)


async def snapshot(
    store: Store, keys: Keys, kinds: Sequence[str], single: Sequence[str] = ()
) -> Snapshot:
    """Every key of ``kinds`` and the ``single`` keys, read in one transaction."""
    ops = [Get(keys.prefix(k), prefix=True) for k in kinds] + [Get(k) for k in single]
    result = await store.txn((), ops)
    by_kind = dict(zip(kinds, result.gets[: len(kinds)], strict=True))
    found = {
        k: (kvs[0] if kvs else None)
        for k, kvs in zip(single, result.gets[len(kinds) :], strict=True)
    }
    return Snapshot(result.revision, by_kind, found)


class CorruptReporter:
    """Reports each corrupt stored value once: a log line and an event, per key and version."""

    def __init__(self, write_event: Callable[[CorruptValue, int], Awaitable[None]]) -> None:
        self._write_event = write_event
        self._seen: set[tuple[str, int]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def report(self, error: CorruptValue, mod_revision: int = 0) -> None:
        """``mod_revision`` tells versions of a key apart (0: unknown, once per key)."""
        mark = (error.key, mod_revision)
        if mark in self._seen:
            return
        self._seen.add(mark)
        if len(self._seen) > 10_000:  # bounded: forget the oldest half, at worst re-report
            self._seen = set(list(self._seen)[5_000:])
        log.warning("skipping %s", error)
        try:
            await self._write_event(error, mod_revision)
        except Exception:  # reporting must never fail the read that found it
            log.exception("could not write the event for %s", error)

    def report_soon(self, error: CorruptValue) -> None:
        """For callers that cannot await (the event log's ``on_corrupt`` hook)."""
        task = asyncio.get_running_loop().create_task(self.report(error))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def decode_all(
    cls: type[M], keys: Keys, kind: str, kvs: Sequence[KeyValue], report: CorruptReporter
) -> Decoded[M]:
    out: Decoded[M] = Decoded()
    for kv in kvs:
        name = keys.name_of(kv.key, kind)
        try:
            out.items[name] = (decode(cls, kv.key, kv.value), kv)
        except CorruptValue as e:
            out.skipped.append(Skipped(key=kv.key, error=e.reason))
            await report.report(e, kv.mod_revision)
    return out


async def decode_one(cls: type[M], kv: KeyValue, report: CorruptReporter) -> M:
    """Decode one value; a corrupt one is reported and raised (there is nothing to show)."""
    try:
        return decode(cls, kv.key, kv.value)
    except CorruptValue as e:
        await report.report(e, kv.mod_revision)
        raise


async def decode_optional(
    cls: type[M], kv: KeyValue | None, report: CorruptReporter, skipped: list[Skipped]
) -> M | None:
    """Decode a value that may be absent; a corrupt one is reported, skipped and None."""
    if kv is None:
        return None
    try:
        return decode(cls, kv.key, kv.value)
    except CorruptValue as e:
        skipped.append(Skipped(key=kv.key, error=e.reason))
        await report.report(e, kv.mod_revision)
        return None
