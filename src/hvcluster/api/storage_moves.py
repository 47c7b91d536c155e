"""Storage moves: ``POST /vms/{name}/move-storage`` moves a running VM's disks to another
volume on the node that runs it (QEMU block mirror; the guest keeps running).

The API stores a ``requested`` record (``requests/storage-moves/<id>``) and answers 202; the
owning agent carries it out (:mod:`hvcluster.agent.storage_move`). It refuses (409, with the
reason) what cannot work now: a VM that is not running, one already moving (a live or quick
migration, or another storage move), an unknown volume, a volume its node does not see,
nothing to move, or a VM with checkpoints (the mirror would drop them). Follow it at
``/storage-moves/{id}``.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from hvcluster.api.context import NO_BODY, Ctx, ValidName
from hvcluster.api.jobs import created, refuse_if_busy
from hvcluster.api.migrations import Cluster, cancelling, valid_id
from hvcluster.api.views import ActionRequest, View
from hvcluster.models.errors import Conflict, InvalidInput, NotFound
from hvcluster.models.lifecycle import VMState
from hvcluster.models.migration import Migration
from hvcluster.models.names import check_name
from hvcluster.models.storage import disks_to_move
from hvcluster.store.checkpoints import lost_by_copy
from hvcluster.store.migrations import change_migration, create_move, read_move, read_moves

router = APIRouter(tags=["storage"])


class StorageMoveRequest(ActionRequest):
    volume: str = Field(max_length=63, description="the volume the VM's disks move to")


class StorageMoveList(View):
    moves: list[Migration]
    revision: int


@router.post("/vms/{name}/move-storage", status_code=202, response_model=Migration)
async def move_storage(
    name: ValidName, ctx: Ctx, request: StorageMoveRequest | None = NO_BODY
) -> Migration:
    """Move the disks of a running VM to ``volume`` while it runs. Returns the record;
    follow it under /storage-moves/{id}."""
    if request is None:
        raise InvalidInput("give the destination volume", field="volume")
    try:
        volume = check_name(request.volume)
    except ValueError as e:
        raise InvalidInput(str(e), field="volume") from None
    cluster = await Cluster(ctx).load()
    spec = cluster.spec(name)
    placement, status = cluster.placements.get(name), cluster.statuses.get(name)
    if (
        placement is None
        or status is None
        or status.state is not VMState.RUNNING
        or (status.node, status.epoch) != (placement.node, placement.epoch)
    ):
        state = status.state.value if status else "not reported"
        raise Conflict(f"vm {name} is not running ({state}); only a running VM's disks move")
    await refuse_if_busy(ctx, name)
    if await ctx.store.get(ctx.keys.volume(volume)) is None:
        raise NotFound(f"volume {volume!r} not found")
    node = cluster.nodes.get(placement.node)
    if node is None or volume not in node.volumes:
        why = node.volume_problems.get(volume, "") if node else ""
        raise Conflict(
            f"cannot move the disks of {name} to volume {volume!r}: node {placement.node} "
            f"does not see it" + (f" ({why})" if why else "")
        )
    if not disks_to_move(spec, volume):
        raise Conflict(f"vm {name} has no writable disk off volume {volume!r}: nothing to move")
    lost = await lost_by_copy(ctx.store, ctx.keys, spec, "a storage move")
    if lost is not None:
        raise Conflict(lost)
    stored = await create_move(
        ctx.store, ctx.keys, name, placement.node, placement.epoch, volume, "api"
    )
    rec = await created(ctx, name, stored, "the storage move")
    await ctx.record(
        "storage.move_requested",
        f"vm/{name}",
        request.reason or f"move the disks of {name} to volume {volume} on {placement.node}",
        {"id": rec.id, "volume": volume, "node": placement.node},
    )
    return rec


@router.get("/storage-moves", response_model=StorageMoveList)
async def list_moves(ctx: Ctx) -> StorageMoveList:
    found = await read_moves(ctx.store, ctx.keys)
    records = sorted(found.values(), key=lambda m: m.created)
    return StorageMoveList(moves=records, revision=await ctx.store.revision())


@router.get("/storage-moves/{mid}", response_model=Migration)
async def show_move(mid: str, ctx: Ctx) -> Migration:
    rec = await read_move(ctx.store, ctx.keys, _valid_id(mid))
    if rec is None:
        raise NotFound(f"storage move {mid!r} not found")
    return rec


@router.post("/storage-moves/{mid}/cancel", status_code=202, response_model=Migration)
async def cancel_move(mid: str, ctx: Ctx, request: ActionRequest | None = NO_BODY) -> Migration:
    """Cancel a storage move before the VM's spec names the new disk; the VM keeps its old
    disk and the copy is removed."""
    reason = request.reason if request and request.reason else "cancelled by an administrator"
    cancel = cancelling(f"storage move {mid}", reason)
    done = await change_migration(ctx.store, ctx.keys, _valid_id(mid), cancel, storage=True)
    if done is not None:
        await ctx.record("storage.move_cancelled", f"vm/{done.vm}", f"storage move {mid}: {reason}")
    return await show_move(mid, ctx)


def _valid_id(mid: str) -> str:
    return valid_id(mid, "storage move")
