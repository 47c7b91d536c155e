"""Guarding many keys in one transaction: etcd allows at most 128 compares in a txn.

:func:`keys_unchanged` gives the compares that hold while each of some keys under one
prefix is still at the revision a caller knows (an agent re-registering with the placements
of the VMs it runs, say): one compare per key while they are few; for more, one read of the
prefix (whole, at one revision R) that finds the keys changed already, and one compare on
the prefix ("nothing under it written after R"). The prefix compare also fails on a change
to any other key under it: that costs the caller a retry, never a wrong commit.

A key *deleted* after the read is not seen by the prefix compare (etcd compares the keys
that exist). Guard with it only what a deletion cannot make unsafe: a placement deleted
starts its VM nowhere else, and one re-created or moved is a write, which is seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from hvcluster.store.base import Compare, Store

MAX_EACH = 100  # keys compared one by one; leaves room for the caller's own compares


@dataclass(frozen=True)
class Guard:
    compares: list[Compare]  # fail while any key is changed (as read, or since)
    changed: set[str] = field(default_factory=set)  # keys found changed by the read


async def keys_unchanged(store: Store, prefix: str, revisions: Mapping[str, int]) -> Guard:
    """Compares holding while every key of ``revisions`` (each under ``prefix``) is at its
    revision there (0: absent), and the keys that already are not."""
    outside = [key for key in revisions if not key.startswith(prefix)]
    if outside:
        raise ValueError(f"keys not under {prefix}: {', '.join(outside[:3])}")
    if len(revisions) <= MAX_EACH:
        return Guard([Compare.mod_is(key, rev) for key, rev in revisions.items()])
    found = await store.range(prefix)
    now = {kv.key: kv.mod_revision for kv in found.kvs}
    changed = {key for key, rev in revisions.items() if now.get(key, 0) != rev}
    # ... and the txn fails while they are changed: a key's mod revision never returns to
    # an old one, so one compare of a key expected at a revision (not absent) is enough.
    stale = sorted(key for key in changed if revisions[key])[:1] or sorted(changed)[:MAX_EACH]
    compares = [Compare.mod_is(key, revisions[key]) for key in stale]
    return Guard([Compare.unchanged_since(prefix, found.revision), *compares], changed)
