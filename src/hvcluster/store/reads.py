"""The one way to read the store: typed values, decoded and validated, each with the bytes and
revision a later compare-and-set needs; a corrupt value reported once and skipped.

* :func:`read_one` / :func:`read_value`: one key (absent or corrupt: None); :class:`Reader`
  for a VM's spec or placement, or a node;
  :func:`read_one_or_error` when the caller must tell "corrupt" from "absent".
* :func:`read_kind` / :func:`read_prefix`: every object under a prefix, at one revision.
* :func:`read_snapshot`: several prefixes and single keys in one transaction (one revision).
* :func:`decode_kv` / :func:`decode_many`: the same for values already read (a watch event,
  a transaction's gets).
* :class:`DecodeCache`: for loops that read whole prefixes every cycle: only the values
  changed since the last read are decoded again.
* :class:`~hvcluster.store.cache.WatchedCache`: for a loop that needs whole prefixes every
  cycle and should not read them every cycle: read once, then kept current by a watch.

A value that does not decode is never fatal: :class:`CorruptReporter` writes one warning
naming the key and the field (and, given ``write_event``, one event) per stored version, not
once per read, so a loop re-reading a corrupt key does not flood the log. Callers that pass no
reporter get the process-wide :data:`LOG_ONCE`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from hvcluster.models.base import Model, decode
from hvcluster.models.errors import CorruptValue
from hvcluster.models.node import Node
from hvcluster.models.vm import Placement, VMSpec
from hvcluster.store.base import Get, KeyValue, Store
from hvcluster.store.keys import Keys

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Model)

WriteEvent = Callable[[CorruptValue, int], Awaitable[None]]


class Entry(Protocol):
    """What a value read comes with: a :class:`KeyValue` or a watch event."""

    @property
    def key(self) -> str: ...
    @property
    def value(self) -> bytes: ...
    @property
    def mod_revision(self) -> int: ...


@dataclass(frozen=True)
class Stored(Generic[M]):
    """A decoded value with the exact bytes and mod revision it was read at."""

    value: M
    raw: bytes
    mod_revision: int
    key: str = ""


@dataclass
class Decoded(Generic[M]):
    """Objects by name; ``present`` names every key, readable or not; ``corrupt`` says why
    the unreadable ones did not decode."""

    items: dict[str, Stored[M]] = field(default_factory=dict)
    present: set[str] = field(default_factory=set)
    corrupt: list[CorruptValue] = field(default_factory=list)

    @property
    def unreadable(self) -> set[str]:
        return self.present - set(self.items)

    def values(self) -> list[M]:
        return [s.value for s in self.items.values()]

    def by_name(self) -> dict[str, M]:
        return {name: s.value for name, s in self.items.items()}

    def get(self, name: str) -> M | None:
        found = self.items.get(name)
        return found.value if found is not None else None


class CorruptReporter:
    """Reports each corrupt stored value once: a log line (and an event, with
    ``write_event``) per key and version."""

    def __init__(self, write_event: WriteEvent | None = None) -> None:
        self._write_event = write_event
        self._seen: set[tuple[str, int]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def first_time(self, error: CorruptValue, mod_revision: int) -> bool:
        mark = (error.key, mod_revision)
        if mark in self._seen:
            return False
        self._seen.add(mark)
        if len(self._seen) > 10_000:  # bounded: forget the oldest half, at worst re-report
            self._seen = set(list(self._seen)[5_000:])
        return True

    async def report(self, error: CorruptValue, mod_revision: int = 0) -> None:
        """``mod_revision`` tells versions of a key apart (0: unknown, once per key)."""
        if not self.first_time(error, mod_revision):
            return
        log.warning("skipping %s", error)
        if self._write_event is None:
            return
        try:
            await self._write_event(error, mod_revision)
        except Exception:  # reporting must never fail the read that found it
            log.exception("could not write the event for %s", error)

    def report_soon(self, error: CorruptValue, mod_revision: int = 0) -> None:
        """For callers that cannot await (a watch event decoded in a sync callback)."""
        if self._write_event is None:  # nothing to await: log now
            if self.first_time(error, mod_revision):
                log.warning("skipping %s", error)
            return
        task = asyncio.get_running_loop().create_task(self.report(error, mod_revision))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settled(self) -> None:
        """Return once every report started by :meth:`report_soon` so far has finished: the
        point after which a test may assert that nothing more was reported."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


LOG_ONCE = CorruptReporter()  # the default: a warning per corrupt key and version


def decode_kv(
    model: type[M], kv: Entry | None, report: CorruptReporter = LOG_ONCE
) -> Stored[M] | None:
    """``kv`` decoded; None if it is absent (None, or empty: a watch event's delete) or
    corrupt (reported, without waiting for an event to be written)."""
    found = _decode(model, kv if kv is not None and kv.value else None)
    if isinstance(found, CorruptValue):
        report.report_soon(found, kv.mod_revision if kv is not None else 0)
        return None
    return found


async def decode_one(
    model: type[M], kv: Entry | None, report: CorruptReporter = LOG_ONCE
) -> Stored[M] | CorruptValue | None:
    """``kv`` decoded, None if absent, or the error (reported) if corrupt."""
    found = _decode(model, kv)
    if isinstance(found, CorruptValue) and kv is not None:
        await report.report(found, kv.mod_revision)
    return found


class DecodeCache:
    """What the last read of each prefix decoded, so that a loop reading whole prefixes every
    cycle (the controller, a node agent: 8,000 VMs at scale) decodes only what changed since.

    A value whose key, mod revision and very bytes are those decoded last time is that same
    value (models are frozen): reused, not decoded again. Nothing else changes: every read
    still reads every key at one revision, and what it returns is exactly what decoding would
    give. Each read replaces what is kept for its prefix with what it found, so the cache
    holds one copy of what is there (a deleted key is forgotten at the next read); corrupt
    values are not kept (decoded, and reported as ever, each time).
    """

    def __init__(self) -> None:
        self._kept: dict[tuple[type[Model], str], dict[str, Stored[Any]]] = {}
        self.decoded = 0  # values decoded (not found here), for tests and benchmarks
        self.reused = 0

    def kept(self, model: type[M], prefix: str) -> dict[str, Stored[M]]:
        return self._kept.get((model, prefix), {})

    def keep(self, model: type[M], prefix: str, found: dict[str, Stored[M]]) -> None:
        self._kept[(model, prefix)] = dict(found)


async def decode_many(
    model: type[M],
    prefix: str,
    kvs: Sequence[KeyValue],
    report: CorruptReporter = LOG_ONCE,
    cache: DecodeCache | None = None,
) -> Decoded[M]:
    """Values read under ``prefix``, by name (the key after the prefix); with ``cache``, those
    unchanged since its last read of ``prefix`` are not decoded again."""
    out: Decoded[M] = Decoded()
    before = cache.kept(model, prefix) if cache is not None else {}
    for kv in kvs:
        name = kv.key[len(prefix) :] if kv.key.startswith(prefix) else kv.key
        out.present.add(name)
        known = before.get(name)
        if (
            cache is not None
            and known is not None
            and known.mod_revision == kv.mod_revision
            and known.key == kv.key
            and known.raw == kv.value
        ):
            cache.reused += 1
            out.items[name] = known
            continue
        found = await decode_one(model, kv, report)
        if cache is not None:
            cache.decoded += 1
        if isinstance(found, CorruptValue):
            out.corrupt.append(found)
        elif found is not None:
            out.items[name] = found
    if cache is not None:
        cache.keep(model, prefix, out.items)
    return out


async def read_one_or_error(
    store: Store, key: str, model: type[M], report: CorruptReporter = LOG_ONCE
) -> Stored[M] | CorruptValue | None:
    """The value at ``key``; None if absent; the error (reported) if corrupt."""
    return await decode_one(model, await store.get(key), report)


async def read_one(
    store: Store, key: str, model: type[M], report: CorruptReporter = LOG_ONCE
) -> Stored[M] | None:
    """The value at ``key``; None if absent or corrupt (reported)."""
    found = await read_one_or_error(store, key, model, report)
    return None if isinstance(found, CorruptValue) else found


async def read_value(
    store: Store, key: str, model: type[M], report: CorruptReporter = LOG_ONCE
) -> M | None:
    """:func:`read_one`'s value alone."""
    found = await read_one(store, key, model, report)
    return found.value if found is not None else None


async def read_prefix(
    store: Store,
    prefix: str,
    model: type[M],
    report: CorruptReporter = LOG_ONCE,
    cache: DecodeCache | None = None,
) -> Decoded[M]:
    """Every value under ``prefix`` (one range: one revision), by the key after it; with
    ``cache``, decoding only what changed since its last read (see :class:`DecodeCache`)."""
    result = await store.range(prefix)
    return await decode_many(model, prefix, result.kvs, report, cache)


async def read_kind(
    store: Store,
    keys: Keys,
    kind: str,
    model: type[M],
    report: CorruptReporter = LOG_ONCE,
    cache: DecodeCache | None = None,
) -> Decoded[M]:
    """Every object of ``kind`` (``vms``, ``nodes``, ...) by name."""
    return await read_prefix(store, keys.prefix(kind), model, report, cache)


@dataclass
class Snapshot:
    """The keys under some prefixes, all read at one revision (one transaction)."""

    keys: Keys
    revision: int
    by_kind: dict[str, tuple[KeyValue, ...]]
    single: dict[str, KeyValue | None] = field(default_factory=dict)

    async def decoded(
        self, model: type[M], kind: str, report: CorruptReporter = LOG_ONCE
    ) -> Decoded[M]:
        """The objects of ``kind`` read, by name."""
        return await decode_many(model, self.keys.prefix(kind), self.by_kind[kind], report)

    def names(self, kind: str) -> set[str]:
        """The name of every key of ``kind`` read, whether it decodes or not."""
        prefix = self.keys.prefix(kind)
        return {kv.key[len(prefix) :] for kv in self.by_kind[kind]}


async def read_snapshot(
    store: Store, keys: Keys, kinds: Sequence[str], single: Sequence[str] = ()
) -> Snapshot:
    """Every key of ``kinds`` and the ``single`` keys, read in one transaction; decode them
    with :meth:`Snapshot.decoded` and :func:`decode_one`."""
    ops = [Get(keys.prefix(k), prefix=True) for k in kinds] + [Get(k) for k in single]
    result = await store.txn((), ops)
    by_kind = dict(zip(kinds, result.gets[: len(kinds)], strict=True))
    found = {
        k: (kvs[0] if kvs else None)
        for k, kvs in zip(single, result.gets[len(kinds) :], strict=True)
    }
    return Snapshot(keys, result.revision, by_kind, found)


def _decode(model: type[M], kv: Entry | None) -> Stored[M] | CorruptValue | None:
    if kv is None:
        return None
    try:
        return Stored(decode(model, kv.key, kv.value), kv.value, kv.mod_revision, kv.key)
    except CorruptValue as e:
        return e


class Reader:
    """The named objects of one cluster, read one at a time: the value, or None when it is
    absent or corrupt (reported). :func:`read_one` gives the revision too."""

    def __init__(self, store: Store, keys: Keys, report: CorruptReporter = LOG_ONCE) -> None:
        self.store, self.keys, self.report = store, keys, report

    async def spec(self, vm: str) -> VMSpec | None:
        return await read_value(self.store, self.keys.vm(vm), VMSpec, self.report)

    async def placement(self, vm: str) -> Placement | None:
        return await read_value(self.store, self.keys.placement(vm), Placement, self.report)

    async def node(self, name: str) -> Node | None:
        return await read_value(self.store, self.keys.node(name), Node, self.report)
