"""What ``GET /nodes`` and ``GET /nodes/<name>`` need of every VM: its placement's node and
uid, its spec's memory and uid; kept between calls so that only what changed is decoded.

At 8,000 VMs, decoding every spec and placement in full (every field validated) cost each
call seconds, for four fields. :class:`Kept` holds, per key, those fields of the value as
it was at its mod revision (with its bytes, compared as :class:`~hvcluster.store.reads.
DecodeCache` does); a value that changed, or that was not seen yet, is decoded in full as
before, so a corrupt one is reported and left out exactly as before. What is kept is a few
fields a VM, never the spec.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from hvcluster.models.base import Model
from hvcluster.models.errors import CorruptValue
from hvcluster.models.vm import Placement, VMSpec, same_uid
from hvcluster.store.base import KeyValue
from hvcluster.store.reads import CorruptReporter, decode_one

M = TypeVar("M", bound=Model)
T = TypeVar("T")


@dataclass(frozen=True)
class _Entry(Generic[T]):
    raw: bytes
    mod_revision: int
    value: T


@dataclass
class Found(Generic[T]):
    """The fields kept of each value by name, and the values that did not decode."""

    items: dict[str, T] = field(default_factory=dict)
    corrupt: list[CorruptValue] = field(default_factory=list)


class Kept(Generic[M, T]):
    """``project`` of each value of ``model`` under one prefix, decoded only when changed."""

    def __init__(self, model: type[M], project: Callable[[M], T]) -> None:
        self.model, self.project = model, project
        self._kept: dict[str, _Entry[T]] = {}
        self.decoded = 0  # values decoded in full (tests and benchmarks)

    async def read(self, prefix: str, kvs: Sequence[KeyValue], report: CorruptReporter) -> Found[T]:
        out: Found[T] = Found()
        kept: dict[str, _Entry[T]] = {}
        for kv in kvs:
            name = kv.key[len(prefix) :] if kv.key.startswith(prefix) else kv.key
            known = self._kept.get(name)
            if known is None or known.mod_revision != kv.mod_revision or known.raw != kv.value:
                self.decoded += 1
                found = await decode_one(self.model, kv, report)
                if isinstance(found, CorruptValue):
                    out.corrupt.append(found)
                    continue
                assert found is not None  # (kv is not None)
                known = _Entry(kv.value, kv.mod_revision, self.project(found.value))
            kept[name] = known
            out.items[name] = known.value
        self._kept = kept  # what is there now: a deleted key is forgotten
        return out


@dataclass(frozen=True)
class Use:
    node: str = ""  # a placement's
    memory_mib: int = 0  # a spec's
    uid: str = ""


class NodeUse:
    """The VMs' fields the node views need, kept by one API (see the module doc)."""

    def __init__(self) -> None:
        self.placements = Kept(Placement, lambda p: Use(node=p.node, uid=p.uid))
        self.specs = Kept(VMSpec, lambda s: Use(memory_mib=s.memory_mib, uid=s.uid))


def placed_memory(placements: dict[str, Use], specs: dict[str, Use]) -> Counter[str]:
    """Node -> the memory (MiB) of the VMs placed on it (a placement of an older VM of the
    same name is not counted)."""
    memory: Counter[str] = Counter()
    for vm, placement in placements.items():
        spec = specs.get(vm)
        if spec is not None and same_uid(spec.uid, placement.uid):
            memory[placement.node] += spec.memory_mib
    return memory
