"""Which finished job records (migrations, storage moves) go, and their deletion.

Records are kept by age and by count: a finished record goes once it is older than
``max_age_s`` (since its last change), or when newer finished records than it number
``max_count`` already. A record under way never goes, whatever its age, and is not counted.
A ``keep`` predicate spares records from the count (a drain in progress reads its own).

Each deletion compares the record's mod revision as read (a record changed since is left
for the next sweep) and deletes the VM's job key too when it still names the record
(:func:`hvcluster.store.jobs.release_if_named`). Deletions go many to a txn
(:func:`hvcluster.store.batches.commit_all`); a batch that fails (one record changed) is
done again one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from hvcluster.models.migration import Migration
from hvcluster.store.base import Compare, Delete, KeyValue, Store
from hvcluster.store.batches import Write, commit_all
from hvcluster.store.jobs import release_if_named
from hvcluster.store.keys import Keys


@dataclass(frozen=True)
class Prunable:
    rec: Migration
    mod_revision: int
    why: str  # "older than ...", "beyond the newest ..."


def last_change(rec: Migration) -> float:
    return max(rec.updated, rec.created)


def to_prune(
    records: Iterable[tuple[Migration, int]],
    now: float,
    max_age_s: float,
    max_count: int,
    keep: Callable[[Migration], bool] = lambda rec: False,
) -> list[Prunable]:
    """The finished ``records`` (each with its mod revision) that go now, oldest first."""
    finished = sorted(
        (r for r in records if not r[0].active),
        key=lambda r: (last_change(r[0]), r[0].id),
        reverse=True,
    )
    out: list[Prunable] = []
    for newer, (rec, rev) in enumerate(finished):
        if last_change(rec) < now - max_age_s:
            out.append(Prunable(rec, rev, f"older than {max_age_s / 86400:g} days"))
        elif newer >= max_count and not keep(rec):
            out.append(Prunable(rec, rev, f"beyond the newest {max_count}"))
    return out[::-1]


async def prune(
    store: Store, keys: Keys, key_of: Callable[[Migration], str], victims: Sequence[Prunable]
) -> int:
    """Delete ``victims`` (records at ``key_of(rec)``); return how many went."""
    if not victims:
        return 0
    jobs = {kv.key: kv for kv in (await store.range(keys.prefix("jobs"))).kvs}
    writes = [Write(*_guard(keys, key_of, jobs, v)) for v in victims]
    return sum(await commit_all(store, writes))


def _guard(
    keys: Keys, key_of: Callable[[Migration], str], jobs: dict[str, KeyValue], v: Prunable
) -> tuple[tuple[Compare, ...], tuple[Delete, ...]]:
    key = key_of(v.rec)
    job = jobs.get(keys.job(v.rec.vm))
    held, release = release_if_named(keys, v.rec, job)
    return (Compare.mod_is(key, v.mod_revision), *held), (Delete(key), *release)
