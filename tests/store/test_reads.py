"""The typed read layer (store/reads.py) on both backends: values decoded with the bytes and
revision they were read at, a corrupt value skipped and reported once per stored version
(a log line naming the key and the field, and the caller's event), never raised."""

from __future__ import annotations

import logging

import pytest

from hvcluster.models.base import encode
from hvcluster.models.errors import CorruptValue
from hvcluster.models.vm import Placement, VMSpec
from hvcluster.store.base import EventType, WatchEvent
from hvcluster.store.reads import (
    CorruptReporter,
    decode_kv,
    decode_many,
    read_kind,
    read_one,
    read_one_or_error,
    read_snapshot,
    read_value,
)
from tests.store.conftest import Harness

BAD = b'{"node": "n1", "epoch": "not a number"}'


class Events:
    """A reporter's event writer that keeps what it was asked to write."""

    def __init__(self) -> None:
        self.written: list[tuple[str, int]] = []

    async def __call__(self, error: CorruptValue, mod_revision: int) -> None:
        self.written.append((error.key, mod_revision))


async def test_read_one_gives_the_value_its_bytes_and_revision(h: Harness) -> None:
    s, k = h.store, h.keys
    raw = encode(Placement(node="n1", epoch=3))
    rev = await s.put(k.placement("web"), raw)
    found = await read_one(s, k.placement("web"), Placement)
    assert found is not None
    assert (found.value.node, found.value.epoch) == ("n1", 3)
    assert (found.raw, found.mod_revision, found.key) == (raw, rev, k.placement("web"))
    assert await read_value(s, k.placement("web"), Placement) == found.value
    assert await read_one(s, k.placement("db"), Placement) is None
    assert await read_one_or_error(s, k.placement("db"), Placement) is None


async def test_a_corrupt_value_is_none_reported_once_per_version(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    s, k = h.store, h.keys
    events = Events()
    report = CorruptReporter(events)
    key = k.placement("web")
    rev = await s.put(key, BAD)
    caplog.set_level(logging.WARNING, logger="hvcluster.store.reads")
    for _ in range(3):  # a loop re-reading it: one report, not three
        assert await read_one(s, key, Placement, report) is None
    error = await read_one_or_error(s, key, Placement, report)
    assert isinstance(error, CorruptValue) and error.key == key
    assert events.written == [(key, rev)]
    lines = [r.getMessage() for r in caplog.records if key in r.getMessage()]
    assert len(lines) == 1 and "epoch" in lines[0]  # names the key and the field
    rev2 = await s.put(key, BAD + b" ")  # a new version of it is reported again
    assert await read_value(s, key, Placement, report) is None
    assert events.written == [(key, rev), (key, rev2)]


async def test_read_kind_skips_the_corrupt_and_names_it(h: Harness) -> None:
    s, k = h.store, h.keys
    await s.put(k.placement("web"), encode(Placement(node="n1", epoch=1)))
    await s.put(k.placement("db"), BAD)
    events = Events()
    found = await read_kind(s, k, "placements", Placement, CorruptReporter(events))
    assert set(found.items) == {"web"}
    assert found.present == {"web", "db"} and found.unreadable == {"db"}
    assert [e.key for e in found.corrupt] == [k.placement("db")]
    assert [p.node for p in found.values()] == ["n1"]
    assert [key for key, _ in events.written] == [k.placement("db")]


async def test_a_snapshot_reads_kinds_and_keys_at_one_revision(h: Harness) -> None:
    s, k = h.store, h.keys
    await s.put(k.placement("web"), encode(Placement(node="n1", epoch=1)))
    last = await s.put(k.placement("db"), BAD)
    snap = await read_snapshot(s, k, ["placements", "vms"], [k.placement("web"), k.vm("x")])
    assert snap.revision >= last
    assert snap.single[k.vm("x")] is None
    placements = await decode_many(Placement, k.prefix("placements"), snap.by_kind["placements"])
    assert set(placements.items) == {"web"} and placements.unreadable == {"db"}
    specs = await decode_many(VMSpec, k.prefix("vms"), snap.by_kind["vms"])
    assert not specs.present


async def test_decode_kv_takes_a_watch_event_and_a_delete_is_absent(h: Harness) -> None:
    key = h.keys.placement("web")
    put = WatchEvent(EventType.PUT, key, encode(Placement(node="n2", epoch=2)), 7)
    found = decode_kv(Placement, put)
    assert found is not None and found.value.node == "n2" and found.mod_revision == 7
    assert decode_kv(Placement, WatchEvent(EventType.DELETE, key, b"", 8)) is None
    assert decode_kv(Placement, WatchEvent(EventType.PUT, key, BAD, 9)) is None
