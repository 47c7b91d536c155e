"""Reading the store for the API, through the typed reads of ``store/reads.py``: one
consistent snapshot per answer, corrupt values skipped.

A value that does not decode never fails a list: it is left out, named in the answer's
``skipped`` and reported once per stored version by the API's
:class:`~hvcluster.store.reads.CorruptReporter` (a log line and an event; a dashboard polling
the list does not flood the log).
"""

from __future__ import annotations

from typing import Any, TypeVar

from hvcluster.api.views import Skipped
from hvcluster.models.base import Model
from hvcluster.models.errors import CorruptValue
from hvcluster.store.base import KeyValue
from hvcluster.store.reads import CorruptReporter, Decoded
from hvcluster.store.reads import decode_one as read_kv

M = TypeVar("M", bound=Model)


def skipped_of(*found: Decoded[Any]) -> list[Skipped]:
    """What the answer says it left out of ``found``."""
    return [Skipped(key=e.key, error=e.reason) for d in found for e in d.corrupt]


async def decode_one(cls: type[M], kv: KeyValue, report: CorruptReporter) -> M:
    """Decode one value; a corrupt one is reported and raised (there is nothing to show)."""
    found = await read_kv(cls, kv, report)
    if isinstance(found, CorruptValue):
        raise found
    assert found is not None  # (kv is not None)
    return found.value


async def decode_optional(
    cls: type[M], kv: KeyValue | None, report: CorruptReporter, skipped: list[Skipped]
) -> M | None:
    """Decode a value that may be absent; a corrupt one is reported, skipped and None."""
    found = await read_kv(cls, kv, report)
    if isinstance(found, CorruptValue):
        skipped.append(Skipped(key=found.key, error=found.reason))
        return None
    return found.value if found is not None else None
