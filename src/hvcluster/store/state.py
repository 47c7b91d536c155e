"""Typed reads of cluster state: each stored object decoded into its model, with the exact
bytes and revision that a later transaction compares against.

A value that does not decode is never fatal: it lands in ``corrupt`` (with the key and why),
its name in ``unreadable``, and the caller reports it and leaves that object alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from hvcluster.models.base import Model, decode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.errors import CorruptValue
from hvcluster.models.node import Node, NodeAlive
from hvcluster.models.vm import Placement, VMSpec, VMStatus
from hvcluster.store.base import KeyValue, Store
from hvcluster.store.keys import Keys

M = TypeVar("M", bound=Model)


@dataclass(frozen=True)
class Stored(Generic[M]):
    value: M
    raw: bytes
    mod_revision: int


@dataclass
class Decoded(Generic[M]):
    items: dict[str, Stored[M]] = field(default_factory=dict)
    present: set[str] = field(default_factory=set)  # every name with a key, readable or not
    corrupt: list[CorruptValue] = field(default_factory=list)

    @property
    def unreadable(self) -> set[str]:
        return self.present - set(self.items)


async def read_kind(store: Store, keys: Keys, kind: str, model: type[M]) -> Decoded[M]:
    found: Decoded[M] = Decoded()
    result = await store.range(keys.prefix(kind))
    for kv in result.kvs:
        _add(found, keys.name_of(kv.key, kind), kv, model)
    return found


def _add(found: Decoded[M], name: str, kv: KeyValue, model: type[M]) -> None:
    found.present.add(name)
    try:
        found.items[name] = Stored(decode(model, kv.key, kv.value), kv.value, kv.mod_revision)
    except CorruptValue as e:
        found.corrupt.append(e)


async def read_config(store: Store, keys: Keys) -> tuple[ClusterConfig, CorruptValue | None]:
    """The cluster config, or the defaults (and the error) if it is absent or corrupt."""
    kv = await store.get(keys.config)
    if kv is None:
        return ClusterConfig(name=keys.cluster), None
    try:
        return decode(ClusterConfig, kv.key, kv.value), None
    except CorruptValue as e:
        return ClusterConfig(name=keys.cluster), e


@dataclass
class ClusterState:
    """Everything the controller reads in one cycle."""

    config: ClusterConfig
    nodes: Decoded[Node]
    alive: Decoded[NodeAlive]
    vms: Decoded[VMSpec]
    placements: Decoded[Placement]
    statuses: Decoded[VMStatus]
    corrupt: list[CorruptValue]

    @property
    def unreadable_vms(self) -> set[str]:
        return self.vms.unreadable | self.placements.unreadable


async def read_cluster(store: Store, keys: Keys) -> ClusterState:
    config, bad = await read_config(store, keys)
    nodes = await read_kind(store, keys, "nodes", Node)
    alive = await read_kind(store, keys, "alive", NodeAlive)
    vms = await read_kind(store, keys, "vms", VMSpec)
    placements = await read_kind(store, keys, "placements", Placement)
    statuses = await read_kind(store, keys, "status", VMStatus)
    corrupt = [bad] if bad else []
    for d in (nodes, alive, vms, placements, statuses):
        corrupt.extend(d.corrupt)
    return ClusterState(config, nodes, alive, vms, placements, statuses, corrupt)
