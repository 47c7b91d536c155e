"""``/api/v1/volumes``: shared volumes (a path every node mounts). Add, list, show, remove.

A volume is storage an admin prepared: a directory (never ``/`` nor a system directory)
holding the marker file ``<path>/.hvc-volume`` with the volume's id, placed by the admin
(``hvc volume mark PATH``). The API checks the marker on its own node and records the
volume (name, path, that id); each agent checks it sees the volume (the same id) and reports
it in its node record. No part of the cluster writes a marker. A volume still used by a VM's
disk cannot be removed.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from fastapi import APIRouter
from pydantic import ConfigDict, Field, field_validator

from hvcluster.api.context import Ctx
from hvcluster.api.node_reported import (
    ReportedList,
    ReportedView,
    add_reported_routes,
)
from hvcluster.api.views import View
from hvcluster.models.base import encode
from hvcluster.models.errors import Conflict, InvalidInput
from hvcluster.models.names import HostPath, Name
from hvcluster.models.node import Node
from hvcluster.models.storage import (
    MARKER,
    MARKER_ID,
    Volume,
    check_volume_path,
    system_dir_problem,
)
from hvcluster.models.vm import VMSpec
from hvcluster.store.base import Compare, Put
from hvcluster.store.reads import decode_many

router = APIRouter(prefix="/volumes", tags=["storage"])


class VolumeRequest(View):
    model_config = ConfigDict(extra="forbid")
    name: Name
    path: HostPath = Field(pattern=r"^/", description="where every node mounts it (absolute)")
    id: str | None = Field(
        default=None,
        pattern=MARKER_ID.pattern,
        description="the id its marker must hold (a check); default: the one it holds",
    )

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return check_volume_path(value)  # not / nor a system directory


MARKER_READ_MAX = 256


def read_marker(path: str) -> str:
    """The id an admin placed in ``<path>/.hvc-volume`` (read on the node serving the
    request, which mounts the volume as every node does). The cluster never writes a
    marker: a volume is storage an admin chose, never a directory the API was told of."""
    root = Path(path)
    real = root.resolve()
    problem = system_dir_problem(str(real))
    if problem is not None:
        raise InvalidInput(f"{path} leads to {real}: {problem}", field="path")
    marker = root / MARKER
    how = f"an admin places it with 'hvc volume mark {path}' on a node that mounts it"
    if not marker.exists():
        raise InvalidInput(f"no volume marker {marker}: {how}", field="path")
    if not marker.is_file() or marker.is_symlink():
        raise InvalidInput(f"{marker} is not a regular file: {how}", field="path")
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            found = os.read(fd, MARKER_READ_MAX).decode(errors="replace").strip()
        finally:
            os.close(fd)
    except OSError as e:
        raise InvalidInput(f"cannot read {marker}: {e.strerror or e}", field="path") from None
    if not MARKER_ID.match(found):
        raise InvalidInput(
            f"{marker} holds no volume id (8-64 letters, digits, '-', '_' or '.'): {how}",
            field="path",
        )
    return found


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def refuse_overlap(volume: Volume, others: list[Volume]) -> None:
    """Refuse ``volume`` where it is another volume's directory (the same marker id, or the
    same real path: another spelling, a symlink) or lies inside or around one: a file there
    would have two names (``csv1:x``, ``csv2:x``), so two locks, and a spec naming one would
    not keep it from a deletion under the other. Paths are resolved on this node."""
    real = os.path.realpath(volume.path)
    for other in others:
        there = os.path.realpath(other.path)
        if other.id == volume.id or real == there:
            raise InvalidInput(
                f"{volume.path} is volume {other.name}'s directory ({other.path}, id "
                f"{other.id}): one directory is one volume",
                field="path",
            )
        if _inside(real, there):
            raise InvalidInput(
                f"{volume.path} lies inside volume {other.name} ({other.path}): its files "
                "would have two names; use a directory outside every volume",
                field="path",
            )
        if _inside(there, real):
            raise InvalidInput(
                f"volume {other.name} ({other.path}) lies inside it: its files would have "
                "two names; use a directory outside every volume",
                field="path",
            )


class VolumeView(ReportedView):
    name: str
    path: str
    id: str
    volume: Volume
    seen_by: list[str]  # nodes that report it with the right id
    free_mib: dict[str, int]  # per node that sees it


class VolumeList(ReportedList):
    volumes: list[VolumeView]


def uses(spec: VMSpec, volume: str) -> bool:
    return any(disk.volume == volume for disk in spec.disks)


def view(volume: Volume, nodes: list[Node], used_by: list[str]) -> VolumeView:
    name = volume.name
    return VolumeView(
        name=name,
        path=volume.path,
        id=volume.id,
        volume=volume,
        seen_by=sorted(n.name for n in nodes if name in n.volumes),
        free_mib={n.name: n.volume_free_mib[name] for n in nodes if name in n.volume_free_mib},
        problems={n.name: n.volume_problems[name] for n in nodes if name in n.volume_problems},
        used_by=used_by,
    )


@router.post("", status_code=201, response_model=VolumeView)
async def add_volume(request: VolumeRequest, ctx: Ctx) -> VolumeView:
    """Add a volume an admin prepared: its path holds the marker with the volume's id."""
    found = await asyncio.to_thread(read_marker, request.path)
    if request.id is not None and request.id != found:
        raise InvalidInput(
            f"the marker in {request.path} holds id {found}, not {request.id}", field="id"
        )
    volume = Volume(name=request.name, path=request.path, id=found)
    key, prefix = ctx.keys.volume(volume.name), ctx.keys.prefix("volumes")
    while True:
        existing = await ctx.store.range(prefix)
        volumes = await decode_many(Volume, ctx.keys.prefix("volumes"), existing.kvs, ctx.corrupt)
        if volume.name in volumes.items or any(kv.key == key for kv in existing.kvs):
            raise Conflict(f"volume {volume.name!r} already exists")
        await asyncio.to_thread(refuse_overlap, volume, volumes.values())
        guard = [Compare.absent(key), Compare.unchanged_since(prefix, existing.revision)]
        result = await ctx.store.txn(guard, [Put(key, encode(volume))])
        if result.succeeded:
            break  # else a volume was added meanwhile: check against it too
    await ctx.record(
        "volume.added",
        f"volume/{volume.name}",
        f"volume {volume.name} added at {volume.path} (id {volume.id})",
        {"path": volume.path, "id": volume.id, "revision": result.revision},
    )
    return view(volume, [], [])


add_reported_routes(
    router, "volume", "volumes", Volume, view, (VolumeView, VolumeList), uses,
    "Forget a volume (its files stay where they are). Refused while a VM has a disk on it.",
)  # fmt: skip
