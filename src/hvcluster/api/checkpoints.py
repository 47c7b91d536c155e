"""Checkpoints of a VM (qcow2 internal snapshots, with its memory when it runs; see
:mod:`hvcluster.models.checkpoint`).

``POST /vms/{name}/checkpoints`` (create), ``POST /vms/{name}/checkpoints/{cp}/revert`` and
``DELETE /vms/{name}/checkpoints/{cp}`` store an operation (``requests/checkpoints/<id>``)
with the VM's job key and answer 202; the agent of the VM's node carries it out
(:mod:`hvcluster.agent.checkpoints`). Follow it at ``/checkpoint-ops/{id}``. A stopped VM
(placed nowhere) is checkpointed (disks only) by an alive node that sees its volumes.

Refused (409, with the reason) where it cannot work: a disk that is not qcow2 (raw has no
internal snapshots), a VM without a writable disk, a VM busy with another job (a migration,
a storage move, another checkpoint operation), a VM between states (starting, stopping,
migrating), a name taken (create) or unknown (revert, delete).
``GET /vms/{name}/checkpoints`` lists them: name, created, size of the saved memory, and
whether memory was saved (as the agent last read the disks).
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from hvcluster.api.context import NO_BODY, Ctx, ValidName
from hvcluster.api.jobs import created, refuse_if_busy
from hvcluster.api.migrations import Cluster
from hvcluster.api.views import ActionRequest, View
from hvcluster.models.checkpoint import (
    Checkpoint,
    CheckpointAction,
    CheckpointOp,
    check_checkpoint_name,
    checkpoint_problem,
)
from hvcluster.models.errors import Conflict, InvalidInput, NotFound
from hvcluster.models.lifecycle import VMState
from hvcluster.models.vm import VMSpec
from hvcluster.store.base import Compare
from hvcluster.store.checkpoints import create_op, read_list, read_op
from hvcluster.store.reads import read_value

router = APIRouter(tags=["checkpoints"])


class CheckpointRequest(ActionRequest):
    name: str = Field(max_length=63, description="the checkpoint's name")


class CheckpointsView(View):
    vm: str
    checkpoints: list[Checkpoint]
    node: str  # the node whose agent last read them from the disks
    updated: float


@router.get("/vms/{name}/checkpoints", response_model=CheckpointsView)
async def list_checkpoints(name: ValidName, ctx: Ctx) -> CheckpointsView:
    spec = await read_value(ctx.store, ctx.keys.vm(name), VMSpec, ctx.corrupt)
    if spec is None:
        raise NotFound(f"vm {name!r} not found")
    found = await read_list(ctx.store, ctx.keys, spec)
    return CheckpointsView(
        vm=name, checkpoints=list(found.checkpoints), node=found.node, updated=found.updated
    )


@router.post("/vms/{name}/checkpoints", status_code=202, response_model=CheckpointOp)
async def create_checkpoint(
    name: ValidName, ctx: Ctx, request: CheckpointRequest | None = NO_BODY
) -> CheckpointOp:
    """Checkpoint the VM: its disks, and its memory when it runs."""
    if request is None:
        raise InvalidInput("give the checkpoint's name", field="name")
    return await _request(ctx, name, CheckpointAction.CREATE, request.name, request.reason)


@router.post("/vms/{name}/checkpoints/{cp}/revert", status_code=202, response_model=CheckpointOp)
async def revert_checkpoint(
    name: ValidName, cp: str, ctx: Ctx, request: ActionRequest | None = NO_BODY
) -> CheckpointOp:
    """Bring the VM back to checkpoint ``cp`` (a running VM resumes its saved memory)."""
    reason = request.reason if request else ""
    return await _request(ctx, name, CheckpointAction.REVERT, cp, reason)


@router.delete("/vms/{name}/checkpoints/{cp}", status_code=202, response_model=CheckpointOp)
async def delete_checkpoint(name: ValidName, cp: str, ctx: Ctx) -> CheckpointOp:
    return await _request(ctx, name, CheckpointAction.DELETE, cp, "")


@router.get("/checkpoint-ops/{oid}", response_model=CheckpointOp)
async def show_op(oid: str, ctx: Ctx) -> CheckpointOp:
    if not oid.replace("-", "").replace("_", "").isalnum() or len(oid) > 64:
        raise InvalidInput(f"invalid operation id {oid!r}", field="id")
    found = await read_op(ctx.store, ctx.keys, oid)
    if found is None:
        raise NotFound(f"checkpoint operation {oid!r} not found")
    return found


async def _request(
    ctx: Ctx, vm: str, action: CheckpointAction, name: str, reason: str
) -> CheckpointOp:
    try:
        name = check_checkpoint_name(name)
    except ValueError as e:
        raise InvalidInput(str(e), field="name") from None
    cluster = await Cluster(ctx).load()
    spec = cluster.spec(vm)
    problem = checkpoint_problem(spec)
    if problem is not None:
        raise Conflict(f"cannot checkpoint vm {vm}: {problem}")
    await refuse_if_busy(ctx, vm)
    held = (await read_list(ctx.store, ctx.keys, spec)).find(name)
    if action is CheckpointAction.CREATE and held is not None:
        raise Conflict(f"vm {vm} has a checkpoint {name!r} already")
    if action is not CheckpointAction.CREATE and held is None:
        raise NotFound(f"vm {vm} has no checkpoint {name!r}")
    node, epoch = _where(cluster, spec)
    # A stopped VM's (qemu-img on its disks) is not created if its spec was written since
    # the read (a start, say); a start compares the job key the other way (api/vms.py).
    unchanged = Compare(ctx.keys.vm(vm), "mod", "<", cluster.revision + 1)
    stopped = [unchanged] if not epoch else []
    stored = await create_op(ctx.store, ctx.keys, vm, node, epoch, action, name, "api", stopped)
    op = await created(ctx, vm, stored, "the operation")
    said = reason or f"{action.value} checkpoint {name!r} of vm {vm} on {node}"
    await ctx.record(
        "checkpoint.requested", f"vm/{vm}", said, {"id": op.id, "action": action.value}
    )
    return op


def _where(cluster: Cluster, spec: VMSpec) -> tuple[str, int]:
    """The node (and placement epoch; 0: placed nowhere) whose agent carries it out."""
    vm = spec.name
    placement, status = cluster.placements.get(vm), cluster.statuses.get(vm)
    if placement is not None:
        steady = (VMState.RUNNING, VMState.PAUSED, VMState.STOPPED)
        if (
            status is None
            or (status.node, status.epoch) != (placement.node, placement.epoch)
            or status.state not in steady
        ):
            state = status.state.value if status else "not reported"
            raise Conflict(
                f"vm {vm} is {state} on {placement.node}: a checkpoint waits until it runs "
                "(or is stopped)"
            )
        if placement.node not in cluster.alive:
            raise Conflict(f"vm {vm}'s node {placement.node} is not alive")
        return placement.node, placement.epoch
    if spec.desired_state == "running":
        raise Conflict(f"vm {vm} is being placed: a checkpoint waits until it runs")
    volumes = {d.volume for d in spec.disks if d.volume is not None}
    for name in sorted(cluster.alive):
        node = cluster.nodes.get(name)
        if node is not None and volumes <= set(node.volumes):
            return name, 0
    raise Conflict(f"no alive node sees the volumes of vm {vm} ({', '.join(sorted(volumes))})")
