"""Reading a switch or a volume for the API: a cluster-wide object that every node reports
on (a bridge ready, a volume seen, or why not) and that VMs use (a NIC on the switch, a disk
on the volume). Its views need every node and every VM spec, read with it at one revision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from hvcluster.api.context import ApiContext
from hvcluster.api.reads import decode_one, skipped_of
from hvcluster.api.views import Skipped
from hvcluster.models.base import Model
from hvcluster.models.errors import NotFound
from hvcluster.models.node import Node
from hvcluster.models.vm import VMSpec
from hvcluster.store.base import Get, KeyValue
from hvcluster.store.reads import decode_many, read_snapshot

M = TypeVar("M", bound=Model)
V = TypeVar("V")


async def nodes_and_specs(
    ctx: ApiContext, node_kvs: tuple[KeyValue, ...], vm_kvs: tuple[KeyValue, ...]
) -> tuple[list[Node], dict[str, VMSpec], list[Skipped]]:
    """Every node and VM spec (by name) of ``node_kvs`` and ``vm_kvs``, and what of them
    did not decode."""
    nodes = await decode_many(Node, ctx.keys.prefix("nodes"), node_kvs, ctx.corrupt)
    specs = await decode_many(VMSpec, ctx.keys.prefix("vms"), vm_kvs, ctx.corrupt)
    return nodes.values(), specs.by_name(), skipped_of(nodes, specs)


async def read_one_with_nodes(
    ctx: ApiContext, cls: type[M], key: str, what: str
) -> tuple[M, list[Node], dict[str, VMSpec]]:
    """The ``cls`` at ``key`` (404 naming ``what`` if absent), every node and every VM spec,
    in one transaction."""
    keys = ctx.keys
    result = await ctx.store.txn(
        (), [Get(key), Get(keys.prefix("nodes"), True), Get(keys.prefix("vms"), True)]
    )
    found, node_kvs, vm_kvs = result.gets
    if not found:
        raise NotFound(f"{what} not found")
    value = await decode_one(cls, found[0], ctx.corrupt)
    nodes, specs, _ = await nodes_and_specs(ctx, node_kvs, vm_kvs)
    return value, nodes, specs


async def read_all_with_nodes(
    ctx: ApiContext,
    cls: type[M],
    kind: str,
    view: Callable[[M, list[Node], dict[str, VMSpec]], V],
) -> tuple[list[V], list[Skipped], int]:
    """Every ``cls`` of ``kind`` as its ``view`` (with every node and VM spec, all read at
    one revision), what did not decode, and that revision: a list route's answer."""
    snap = await read_snapshot(ctx.store, ctx.keys, (kind, "nodes", "vms"))
    found = await snap.decoded(cls, kind, ctx.corrupt)
    nodes, specs, skipped = await nodes_and_specs(ctx, snap.by_kind["nodes"], snap.by_kind["vms"])
    views = [view(value, nodes, specs) for value in found.values()]
    return views, skipped_of(found) + skipped, snap.revision
