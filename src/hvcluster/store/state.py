"""What the controller reads each cycle, through the typed reads of ``store/reads.py``.

A value that does not decode is never fatal: it lands in ``corrupt`` (with the key and why),
its name in ``unreadable``, and the caller reports it and leaves that object alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from hvcluster.models.base import Model
from hvcluster.models.config import ClusterConfig
from hvcluster.models.errors import CorruptValue
from hvcluster.models.node import Node, NodeAlive
from hvcluster.models.vm import Placement, VMSpec, VMStatus
from hvcluster.store.base import Store
from hvcluster.store.cache import CacheView
from hvcluster.store.keys import Keys
from hvcluster.store.reads import DecodeCache, Decoded, read_kind, read_one_or_error


async def read_config(store: Store, keys: Keys) -> tuple[ClusterConfig, CorruptValue | None]:
    """The cluster config, or the defaults (and the error) if it is absent or corrupt."""
    found = await read_one_or_error(store, keys.config, ClusterConfig)
    if isinstance(found, CorruptValue):
        return ClusterConfig(name=keys.cluster), found
    return (found.value if found else ClusterConfig(name=keys.cluster)), None


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


async def read_cluster(store: Store, keys: Keys, cache: DecodeCache | None = None) -> ClusterState:
    """Everything, read afresh; with ``cache``, only what changed since its last read is
    decoded (what a loop reading this every cycle passes)."""
    config, bad = await read_config(store, keys)
    nodes = await read_kind(store, keys, "nodes", Node, cache=cache)
    alive = await read_kind(store, keys, "alive", NodeAlive, cache=cache)
    vms = await read_kind(store, keys, "vms", VMSpec, cache=cache)
    placements = await read_kind(store, keys, "placements", Placement, cache=cache)
    statuses = await read_kind(store, keys, "status", VMStatus, cache=cache)
    corrupt = [bad] if bad else []
    for d in (nodes, alive, vms, placements, statuses):
        corrupt.extend(d.corrupt)
    return ClusterState(config, nodes, alive, vms, placements, statuses, corrupt)


# What :func:`read_cluster` reads, by kind: a :class:`~.cache.WatchedCache` given
# :func:`cluster_prefixes` keeps the same, and :func:`cluster_from` reads it from the cache.
CLUSTER_KINDS: dict[str, type[Model]] = {
    "nodes": Node,
    "alive": NodeAlive,
    "vms": VMSpec,
    "placements": Placement,
    "status": VMStatus,
}


def cluster_prefixes(keys: Keys) -> dict[str, type[Model]]:
    """The prefixes (and the config key) a watched cache needs for :func:`cluster_from`."""
    found: dict[str, type[Model]] = {keys.config: ClusterConfig}
    found.update({keys.prefix(kind): model for kind, model in CLUSTER_KINDS.items()})
    return found


def config_from(view: CacheView, keys: Keys) -> ClusterConfig:
    """The cluster config in a watched cache's view, or the defaults if absent or corrupt."""
    return view.decoded(keys.config, ClusterConfig).get("") or ClusterConfig(name=keys.cluster)


def cluster_from(view: CacheView, keys: Keys) -> ClusterState:
    """:func:`read_cluster`'s answer, from a watched cache's view (all at one revision)."""
    config = config_from(view, keys)
    corrupt = list(view.decoded(keys.config, ClusterConfig).corrupt)
    nodes = view.decoded(keys.prefix("nodes"), Node)
    alive = view.decoded(keys.prefix("alive"), NodeAlive)
    vms = view.decoded(keys.prefix("vms"), VMSpec)
    placements = view.decoded(keys.prefix("placements"), Placement)
    statuses = view.decoded(keys.prefix("status"), VMStatus)
    for d in (nodes, alive, vms, placements, statuses):
        corrupt.extend(d.corrupt)
    return ClusterState(config, nodes, alive, vms, placements, statuses, corrupt)
