"""``/api/v1/volumes``: shared volumes (a path every node mounts). Add, list, show, remove.

The API only records a volume (name, path, a generated id); each agent checks it sees the
volume (the marker file ``<path>/.hvc-volume`` holds the id) and reports it in its node
record. A volume still used by a VM's disk cannot be removed.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends
from pydantic import Field

from hvcluster.api.context import ApiContext, context, valid_name
from hvcluster.api.reads import decode_all, decode_one, snapshot
from hvcluster.api.removal import Removed, remove_unused
from hvcluster.api.views import Skipped, View
from hvcluster.models.base import encode
from hvcluster.models.errors import Conflict, NotFound
from hvcluster.models.names import HostPath, Name
from hvcluster.models.node import Node
from hvcluster.models.storage import Volume
from hvcluster.models.vm import VMSpec
from hvcluster.store.base import Compare, Get, KeyValue, Put

router = APIRouter(prefix="/volumes", tags=["storage"])


class VolumeRequest(View):
    name: Name
    path: HostPath = Field(pattern=r"^/", description="where every node mounts it (absolute)")
    id: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{32}$",
        description="adopt this id (storage already marked, e.g. a volume added again); "
        "default: a new one",
    )


class VolumeView(View):
    name: str
    path: str
    id: str
    volume: Volume
    seen_by: list[str]  # nodes that report it with the right id
    free_mib: dict[str, int]  # per node that sees it
    problems: dict[str, str]  # node -> why it does not see it
    used_by: list[str]  # VMs with a disk on it


class VolumeList(View):
    volumes: list[VolumeView]
    skipped: list[Skipped] = []
    revision: int


def users(specs: dict[str, VMSpec], volume: str) -> list[str]:
    return sorted(n for n, s in specs.items() if any(d.volume == volume for d in s.disks))


def view(volume: Volume, nodes: list[Node], specs: dict[str, VMSpec]) -> VolumeView:
    name = volume.name
    return VolumeView(
        name=name,
        path=volume.path,
        id=volume.id,
        volume=volume,
        seen_by=sorted(n.name for n in nodes if name in n.volumes),
        free_mib={n.name: n.volume_free_mib[name] for n in nodes if name in n.volume_free_mib},
        problems={n.name: n.volume_problems[name] for n in nodes if name in n.volume_problems},
        used_by=users(specs, name),
    )


async def _others(
    ctx: ApiContext, node_kvs: tuple[KeyValue, ...], vm_kvs: tuple[KeyValue, ...]
) -> tuple[list[Node], dict[str, VMSpec], list[Skipped]]:
    nodes = await decode_all(Node, ctx.keys, "nodes", node_kvs, ctx.corrupt)
    specs = await decode_all(VMSpec, ctx.keys, "vms", vm_kvs, ctx.corrupt)
    return (
        [n for n, _ in nodes.items.values()],
        {name: s for name, (s, _) in specs.items.items()},
        nodes.skipped + specs.skipped,
    )


@router.get("", response_model=VolumeList)
async def list_volumes(ctx: ApiContext = Depends(context)) -> VolumeList:
    snap = await snapshot(ctx.store, ctx.keys, ("volumes", "nodes", "vms"))
    volumes = await decode_all(Volume, ctx.keys, "volumes", snap.by_kind["volumes"], ctx.corrupt)
    nodes, specs, skipped = await _others(ctx, snap.by_kind["nodes"], snap.by_kind["vms"])
    return VolumeList(
        volumes=[view(v, nodes, specs) for v, _ in volumes.items.values()],
        skipped=volumes.skipped + skipped,
        revision=snap.revision,
    )


@router.post("", status_code=201, response_model=VolumeView)
async def add_volume(request: VolumeRequest, ctx: ApiContext = Depends(context)) -> VolumeView:
    path = "/" + "/".join(p for p in request.path.split("/") if p)  # no trailing or double '/'
    volume = Volume(name=request.name, path=path, id=request.id or uuid.uuid4().hex)
    key = ctx.keys.volume(volume.name)
    result = await ctx.store.txn([Compare.absent(key)], [Put(key, encode(volume))])
    if not result.succeeded:
        raise Conflict(f"volume {volume.name!r} already exists")
    await ctx.record(
        "volume.added",
        f"volume/{volume.name}",
        f"volume {volume.name} added at {volume.path} (id {volume.id})",
        {"path": volume.path, "id": volume.id, "revision": result.revision},
    )
    return view(volume, [], {})


@router.get("/{name}", response_model=VolumeView)
async def show_volume(
    name: str = Depends(valid_name), ctx: ApiContext = Depends(context)
) -> VolumeView:
    keys = ctx.keys
    result = await ctx.store.txn(
        (),
        [Get(keys.volume(name)), Get(keys.prefix("nodes"), True), Get(keys.prefix("vms"), True)],
    )
    found, node_kvs, vm_kvs = result.gets
    if not found:
        raise NotFound(f"volume {name!r} not found")
    volume = await decode_one(Volume, found[0], ctx.corrupt)
    nodes, specs, _ = await _others(ctx, node_kvs, vm_kvs)
    return view(volume, nodes, specs)


@router.delete("/{name}", response_model=Removed)
async def remove_volume(
    name: str = Depends(valid_name), ctx: ApiContext = Depends(context)
) -> Removed:
    """Forget a volume (its files stay where they are). Refused while a VM has a disk on it."""
    return await remove_unused(ctx, "volume", ctx.keys.volume(name), name, users)
