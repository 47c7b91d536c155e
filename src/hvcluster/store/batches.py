"""Many guarded writes in few transactions, each within etcd's limits.

A controller decision at scale writes many keys (a dead node's 125 VMs placed elsewhere,
a drain's wave, an agent's starts of one round): one transaction each costs a round trip
and a raft entry each. :func:`commit_all` packs such :class:`Write` s into as few
transactions as etcd accepts: at most :data:`MAX_OPS` compares and :data:`MAX_OPS` ops
each (etcd's ``--max-txn-ops`` is 128), at most :data:`MAX_BYTES` of keys and values
(its request limit is 1.5 MiB), no key written twice in one (etcd refuses that). A compare
that several writes share (a dead node's ``alive`` key absent) is sent once.

Each write keeps its own meaning: it commits only if all its compares hold. A batch whose
compares do not all hold commits nothing, and its writes are then tried one by one, so one
write that lost a race costs the others a retry, never their commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hvcluster.store.base import Compare, Delete, Put, Store

MAX_OPS = 120  # compares, and ops, per transaction: under etcd's default 128
MAX_BYTES = 1024 * 1024  # keys and values per transaction: under etcd's 1.5 MiB request


@dataclass(frozen=True)
class Write:
    """Ops that must commit together, only while every compare holds."""

    compares: tuple[Compare, ...]
    ops: tuple[Put | Delete, ...]

    @property
    def size(self) -> int:
        """Its bytes in a request (keys and values; the framing is left to the margin)."""
        values = sum(len(c.key) + (len(c.value) if isinstance(c.value, bytes) else 8)
                     for c in self.compares)  # fmt: skip
        return values + sum(len(o.key) + (len(o.value) if isinstance(o, Put) else 0)
                            for o in self.ops)  # fmt: skip


def batches(writes: Sequence[Write]) -> list[list[int]]:
    """The indexes of ``writes`` grouped, in order, into transactions within the limits.
    A write too large alone still gets a batch of its own (etcd then says why)."""
    out: list[list[int]] = []
    current: list[int] = []
    compares: set[Compare] = set()
    keys: set[str] = set()
    ops = size = 0
    for i, w in enumerate(writes):
        new = [c for c in dict.fromkeys(w.compares) if c not in compares]
        written = {o.key for o in w.ops}
        fits = (
            len(compares) + len(new) <= MAX_OPS
            and ops + len(w.ops) <= MAX_OPS
            and size + w.size <= MAX_BYTES
            and not written & keys
        )
        if current and not fits:
            out.append(current)
            current, compares, keys, ops, size = [], set(), set(), 0, 0
            new = list(dict.fromkeys(w.compares))
        current.append(i)
        compares.update(new)
        keys |= written
        ops += len(w.ops)
        size += w.size
    if current:
        out.append(current)
    return out


async def commit_all(store: Store, writes: Sequence[Write]) -> list[bool]:
    """Commit each of ``writes`` whose compares hold, in as few transactions as the limits
    allow; for each, whether it committed."""
    done = [False] * len(writes)
    for batch in batches(writes):
        if len(batch) == 1:
            w = writes[batch[0]]
            done[batch[0]] = (await store.txn(list(w.compares), list(w.ops))).succeeded
            continue
        compares = list(dict.fromkeys(c for i in batch for c in writes[i].compares))
        ops = [o for i in batch for o in writes[i].ops]
        if (await store.txn(compares, ops)).succeeded:
            for i in batch:
                done[i] = True
            continue
        for i in batch:  # one lost a race: the others still go
            w = writes[i]
            done[i] = (await store.txn(list(w.compares), list(w.ops))).succeeded
    return done
