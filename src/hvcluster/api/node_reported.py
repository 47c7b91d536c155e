"""Reading a switch or a volume for the API: a cluster-wide object that every node reports
on (a bridge ready, a volume seen, or why not) and that VMs use (a NIC on the switch, a disk
on the volume). Its views need every node and every VM spec, read with it at one revision.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any, TypeVar

from fastapi import APIRouter

from hvcluster.api.context import ApiContext, Ctx, ValidName
from hvcluster.api.reads import decode_one, skipped_of
from hvcluster.api.removal import Removed, UsersOf, remove_unused
from hvcluster.api.views import Skipped, View
from hvcluster.models.base import Model
from hvcluster.models.errors import NotFound
from hvcluster.models.node import Node
from hvcluster.models.vm import VMSpec
from hvcluster.store.base import Get, KeyValue
from hvcluster.store.reads import decode_many, read_snapshot

M = TypeVar("M", bound=Model)
V = TypeVar("V")
RV = TypeVar("RV", bound="ReportedView")


class ReportedView(View):
    """What the nodes report on one object that is not theirs, and the VMs that use it."""

    problems: dict[str, str]  # node -> why it does not have it (a bridge) or see it (a volume)
    used_by: list[str]  # VMs with a NIC on it (a switch) or a disk on it (a volume)


class ReportedList(View):
    """A list route's answer beside its items: what did not decode, and the revision read."""

    skipped: list[Skipped] = []
    revision: int


Uses = Callable[[VMSpec, str], bool]  # does this VM spec use the object of this name?
View_ = Callable[[M, list[Node], list[str]], RV]  # the object, every node, the VMs using it


def users_of(uses: Uses) -> UsersOf:
    """The names of the VMs (sorted) whose spec ``uses`` an object, by its name."""
    return lambda specs, name: sorted(vm for vm, spec in specs.items() if uses(spec, name))


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


def add_reported_routes(
    router: APIRouter,
    noun: str,
    kind: str,
    cls: type[M],
    view: View_[M, RV],
    models: tuple[type[RV], type[ReportedList]],
    uses: Uses,
    removing: str,
) -> None:
    """The list, show and remove routes of a node-reported ``kind`` (whose one is a
    ``noun``), the same for switches and volumes: list and show answer its ``view``, with
    every node and the VMs that it ``uses``, read at one revision; remove is refused while
    a VM uses it (``removing`` says what removing it does, in the API's docs)."""
    view_model, list_model = models
    users, name_of = users_of(uses), attrgetter("name")  # (a switch's, a volume's)

    def with_users(value: M, nodes: list[Node], specs: dict[str, VMSpec]) -> RV:
        return view(value, nodes, users(specs, name_of(value)))

    async def list_all(ctx: Ctx) -> Any:
        views, skipped, revision = await read_all_with_nodes(ctx, cls, kind, with_users)
        return list_model.model_validate({kind: views, "skipped": skipped, "revision": revision})

    async def show(name: ValidName, ctx: Ctx) -> Any:
        key, what = ctx.keys.prefix(kind) + name, f"{noun} {name!r}"
        value, nodes, specs = await read_one_with_nodes(ctx, cls, key, what)
        return with_users(value, nodes, specs)

    async def remove(name: ValidName, ctx: Ctx) -> Removed:
        return await remove_unused(ctx, noun, ctx.keys.prefix(kind) + name, name, users)

    router.add_api_route("", list_all, methods=["GET"], response_model=list_model,
                         name=f"list_{kind}")  # fmt: skip
    router.add_api_route("/{name}", show, methods=["GET"], response_model=view_model,
                         name=f"show_{noun}")  # fmt: skip
    router.add_api_route("/{name}", remove, methods=["DELETE"], response_model=Removed,
                         name=f"remove_{noun}", description=removing)  # fmt: skip
