"""Writing intent: compare-and-set on the mod revision, retried when another writer won.

Every object the API changes (a VM's desired state, a node's admin state) has other writers
too (agents, the controller), so the API never read-modify-writes blindly: it reads the value
and its mod revision, computes the new value, and commits only if the revision is unchanged;
if not, it reads again and re-decides (the change may no longer be needed, or allowed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from hvcluster.api.reads import decode_one
from hvcluster.models.base import Model, encode
from hvcluster.models.errors import Conflict, NotFound
from hvcluster.store.base import Compare, Put, Store
from hvcluster.store.reads import CorruptReporter

M = TypeVar("M", bound=Model)

ATTEMPTS = 10


@dataclass(frozen=True)
class Updated(Generic[M]):
    before: M
    after: M
    changed: bool
    revision: int


async def update(
    store: Store,
    key: str,
    cls: type[M],
    change: Callable[[M], M | None],
    *,
    what: str,
    report: CorruptReporter,
    attempts: int = ATTEMPTS,
    compares: Sequence[Compare] = (),
) -> Updated[M]:
    """Apply ``change`` to the value at ``key`` under compare-and-set (and ``compares``: a
    write they fail is tried again, up to ``attempts`` times).

    ``change`` returns the new value, or None when there is nothing to do; it may raise
    (e.g. an illegal transition), which aborts the update. ``what`` names the object in
    messages ("vm web-1").
    """
    for _ in range(attempts):
        kv = await store.get(key)
        if kv is None:
            raise NotFound(f"{what} not found")
        current = await decode_one(cls, kv, report)
        new = change(current)
        if new is None or new == current:
            return Updated(current, current, False, kv.mod_revision)
        guard = [Compare.mod_is(key, kv.mod_revision), *compares]
        result = await store.txn(guard, [Put(key, encode(new))])
        if result.succeeded:
            return Updated(current, new, True, result.revision)
    raise Conflict(f"{what} kept changing under us ({attempts} attempts); try again")
