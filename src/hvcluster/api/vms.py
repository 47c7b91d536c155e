"""``/api/v1/vms``: create, list, show, start, stop, delete. Intent only: the controller
places what is written here and the agents run it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from fastapi import APIRouter, Query

from hvcluster.api.balancing import check_admission
from hvcluster.api.context import NO_BODY, ApiContext, Ctx, ValidName
from hvcluster.api.reads import decode_one, decode_optional, skipped_of
from hvcluster.api.views import ActionRequest, Deleted, Skipped, VMList, VMView
from hvcluster.api.writes import ATTEMPTS, update
from hvcluster.models.base import encode
from hvcluster.models.checkpoint import CheckpointOp
from hvcluster.models.errors import Conflict, InvalidInput, NotFound
from hvcluster.models.lifecycle import VMState
from hvcluster.models.storage import DiskDeletion, Volume
from hvcluster.models.vm import Placement, VMSpec, VMStatus, is_under, same_vm
from hvcluster.store.base import Compare, Delete, Get, Put, TxnResult
from hvcluster.store.jobs import holder
from hvcluster.store.reads import Decoded, decode_many, read_one, read_snapshot
from hvcluster.store.state import read_config

router = APIRouter(prefix="/vms", tags=["vms"])


def state_of(spec: VMSpec, placement: Placement | None, status: VMStatus | None) -> VMState:
    """The state to show: the owner's report if it is about the current placement (or the
    controller left the VM failed), else what spec and placement imply. A placement or
    status of an older VM of the same name (another uid) is not this one's."""
    if placement is not None and not same_vm(spec, placement.uid):
        placement = None
    if status is not None and not same_vm(spec, status.uid):
        status = None
    if status is not None and (
        status.node == ""
        or (
            placement is not None
            and status.node == placement.node
            and status.epoch == placement.epoch
        )
    ):
        return status.state
    if spec.desired_state == "stopped":
        return VMState.STOPPED
    return VMState.PENDING


def view(
    spec: VMSpec, placement: Placement | None, status: VMStatus | None, spec_revision: int = 0
) -> VMView:
    """The VM as shown. A placement or status of an older VM of the same name (deleted,
    perhaps still stopping: another uid) is not this one's and is left out."""
    if placement is not None and not same_vm(spec, placement.uid):
        placement = None
    if status is not None and not same_vm(spec, status.uid):
        status = None
    return VMView(
        name=spec.name,
        desired_state=spec.desired_state,
        state=state_of(spec, placement, status),
        node=placement.node if placement else "",
        spec=spec,
        placement=placement,
        status=status,
        spec_revision=spec_revision,
    )


async def load_vm(ctx: ApiContext, name: str, skipped: list[Skipped]) -> VMView:
    """One VM with its placement and status, read in one transaction."""
    keys = ctx.keys
    result = await ctx.store.txn(
        (), [Get(keys.vm(name)), Get(keys.placement(name)), Get(keys.status(name))]
    )
    spec_kv, placement_kv, status_kv = (found[0] if found else None for found in result.gets)
    if spec_kv is None:
        raise NotFound(f"vm {name!r} not found")
    spec = await decode_one(VMSpec, spec_kv, ctx.corrupt)
    placement = await decode_optional(Placement, placement_kv, ctx.corrupt, skipped)
    status = await decode_optional(VMStatus, status_kv, ctx.corrupt, skipped)
    return view(spec, placement, status, spec_kv.mod_revision)


@router.get("", response_model=VMList)
async def list_vms(ctx: Ctx) -> VMList:
    snap = await read_snapshot(ctx.store, ctx.keys, ("vms", "placements", "status"))
    specs = await snap.decoded(VMSpec, "vms", ctx.corrupt)
    placements: Decoded[Placement] = await snap.decoded(Placement, "placements", ctx.corrupt)
    statuses: Decoded[VMStatus] = await snap.decoded(VMStatus, "status", ctx.corrupt)
    vms = []
    for name, spec in specs.by_name().items():
        revision = specs.items[name].mod_revision
        vms.append(view(spec, placements.get(name), statuses.get(name), revision))
    skipped = skipped_of(specs, placements, statuses)
    return VMList(vms=vms, skipped=skipped, revision=snap.revision)


async def check_disk_dirs(ctx: ApiContext, spec: VMSpec) -> None:
    """Refuse a disk at an absolute path, or a kernel or initrd, outside the cluster config's
    ``allowed_disk_dirs`` (by name here; the agent checks again with the host's file
    system, symlinks followed)."""
    config, _ = await read_config(ctx.store, ctx.keys)
    allowed = config.allowed_disk_dirs
    where = ", ".join(allowed) if allowed else "none"
    for i, disk in enumerate(spec.disks):
        if disk.volume is None and not any(is_under(disk.path, d) for d in allowed):
            raise InvalidInput(
                f"disk {disk.path} is not on a volume (give 'volume' and a relative path) "
                f"nor under a directory the cluster config allows (allowed_disk_dirs: {where})",
                field=f"disks.{i}.path",
            )
    if any(disk.volume is None for disk in spec.disks):
        await refuse_volume_files_by_path(ctx, spec)
    for field, path in spec.boot.files():
        if not any(is_under(path, d) for d in allowed):
            raise InvalidInput(
                f"{path} is not under a directory the cluster config allows for disk and "
                f"boot images (allowed_disk_dirs: {where})",
                field=f"boot.{field}",
            )


async def refuse_volume_files_by_path(ctx: ApiContext, spec: VMSpec) -> None:
    """Refuse a disk at an absolute path inside a volume: the file is named in the volume's
    form only (``VOLUME:relative/path``), else it has two names, and a spec naming it by
    path would not keep it from a deletion by its volume name."""
    found = await ctx.store.range(ctx.keys.prefix("volumes"))
    volumes = await decode_many(Volume, ctx.keys.prefix("volumes"), found.kvs, ctx.corrupt)
    for i, disk in enumerate(spec.disks):
        for volume in volumes.values():
            if disk.volume is None and is_under(disk.path, volume.path):
                relative = disk.path[len(volume.path.rstrip("/")) + 1 :]
                raise InvalidInput(
                    f"disk {disk.path} is on volume {volume.name}: name it as volume "
                    f"{volume.name}, path {relative}",
                    field=f"disks.{i}.path",
                )


@router.post("", status_code=201, response_model=VMView)
async def create_vm(spec: VMSpec, ctx: Ctx) -> VMView:
    """Create a VM. It gets a new uid: its placement and status carry it, so nothing of an
    older VM of the same name (deleted, perhaps still stopping) is ever taken for its own."""
    await check_disk_dirs(ctx, spec)
    warnings = await check_admission(ctx, spec)  # room kept for node failures
    spec = spec.model_copy(update={"uid": uuid.uuid4().hex})
    key = ctx.keys.vm(spec.name)
    result = await ctx.store.txn([Compare.absent(key)], [Put(key, encode(spec))])
    if not result.succeeded:
        raise Conflict(f"vm {spec.name!r} already exists")
    await ctx.record(
        "vm.created",
        f"vm/{spec.name}",
        f"vm {spec.name} created ({spec.vcpus} vCPU, {spec.memory_mib} MiB, "
        f"desired {spec.desired_state}, priority {spec.ha.priority.value})",
        {"revision": result.revision},
    )
    return view(spec, None, None).model_copy(update={"warnings": warnings})


@router.get("/{name}", response_model=VMView)
async def show_vm(name: ValidName, ctx: Ctx) -> VMView:
    return await load_vm(ctx, name, [])


async def _set_desired(
    ctx: ApiContext,
    name: str,
    desired: str,
    request: ActionRequest | None,
    compares: Sequence[Compare] = (),
) -> VMView:
    def change(spec: VMSpec) -> VMSpec | None:
        if spec.desired_state == desired:
            return None
        return spec.model_copy(update={"desired_state": desired})

    vm = ctx.keys.vm(name)
    done = await update(
        ctx.store, vm, VMSpec, change, what=f"vm {name!r}", report=ctx.corrupt, compares=compares
    )
    if done.changed:
        verb = "start" if desired == "running" else "stop"
        reason = request.reason if request and request.reason else f"{verb} requested"
        await ctx.record(
            f"vm.{verb}_requested",
            f"vm/{name}",
            reason,
            {"desired_state": desired, "revision": done.revision},
        )
    return await load_vm(ctx, name, [])


async def _clear_left_failed(ctx: ApiContext, name: str, request: ActionRequest | None) -> None:
    """Delete ``status/<vm>`` if it is the controller's left-failed mark (node "", nobody
    runs it), compared on its mod revision so that a report written meanwhile stays. The
    controller then places the VM again as a new one."""
    key = ctx.keys.status(name)
    for _ in range(ATTEMPTS):
        found = await read_one(ctx.store, key, VMStatus)
        if found is None:
            return  # none, or corrupt: not ours to judge (the list reports it)
        status = found.value
        if not (status.left_failed and status.node == "" and status.state is VMState.FAILED):
            return
        result = await ctx.store.txn([Compare.mod_is(key, found.mod_revision)], [Delete(key)])
        if result.succeeded:
            reason = request.reason if request and request.reason else "start requested"
            await ctx.record(
                "vm.failed_cleared",
                f"vm/{name}",
                f"{reason}: cleared the left-failed mark ({status.last_error})",
                {"revision": result.revision},
            )
            return
    raise Conflict(f"vm {name!r}'s status kept changing under us; try again")


@router.post("/{name}/start", status_code=202, response_model=VMView)
async def start_vm(name: ValidName, ctx: Ctx, request: ActionRequest | None = NO_BODY) -> VMView:
    """Desired state running. A VM the controller left failed (too many failovers, no node
    fits) is also given another chance: its left-failed mark is cleared."""
    current = await read_one(ctx.store, ctx.keys.vm(name), VMSpec, ctx.corrupt)
    guard: list[Compare] = []
    warnings: list[str] = []
    if current is not None and current.value.desired_state != "running":
        guard = await _no_checkpoint_under_way(ctx, name)
        running = current.value.model_copy(update={"desired_state": "running"})
        warnings = await check_admission(ctx, running)
    await _clear_left_failed(ctx, name, request)
    started = await _set_desired(ctx, name, "running", request, guard)
    return started.model_copy(update={"warnings": warnings})


async def _no_checkpoint_under_way(ctx: ApiContext, name: str) -> list[Compare]:
    """A stopped VM does not start during a checkpoint operation of it (``qemu-img snapshot``
    on its disks, which a QEMU starting on them would fail on): refused (409) while one
    holds the VM; else the compare that fails the start's write if a job takes the VM
    meanwhile (the checkpoint API compares the VM's spec the other way)."""
    key = ctx.keys.job(name)
    kv = await ctx.store.get(key)  # before the holder: one created between is seen there
    found = await holder(ctx.store, ctx.keys, name)
    if found is not None and isinstance(found[1], CheckpointOp) and found[1].active:
        op = found[1]
        raise Conflict(
            f"vm {name} is busy with {op.what} ({op.id}, {op.state.value}): start it once that ends"
        )
    return [Compare.absent(key) if kv is None else Compare.mod_is(key, kv.mod_revision)]


@router.post("/{name}/stop", status_code=202, response_model=VMView)
async def stop_vm(name: ValidName, ctx: Ctx, request: ActionRequest | None = NO_BODY) -> VMView:
    return await _set_desired(ctx, name, "stopped", request)


@router.delete("/{name}", status_code=202, response_model=Deleted)
async def delete_vm(
    name: ValidName,
    ctx: Ctx,
    disks: bool = Query(False, description="also delete its disk files on shared volumes"),
) -> Deleted:
    """Delete the spec. The controller then removes the placement and the owning agent stops
    the VM (agents stop VMs that have no spec). A corrupt spec can be deleted too.

    With ``disks=true`` the VM's disks on shared volumes are deleted too, by an agent that
    sees the volume, once no node holds their locks: only files the cluster created for it
    that no VM's spec names (the others, and disks outside volumes, are kept)."""
    key = ctx.keys.vm(name)
    if disks:
        result = await _delete_with_disks(ctx, name)
    else:
        result = await ctx.store.txn([Compare.present(key)], _deletes(ctx, name))
    if not result.succeeded:
        raise NotFound(f"vm {name!r} not found")
    await ctx.record(
        "vm.deleted", f"vm/{name}", f"vm {name} deleted", {"revision": result.revision}
    )
    return Deleted(name=name, revision=result.revision)


def _deletes(ctx: ApiContext, name: str) -> list[Put | Delete]:
    """The spec and what only it gives meaning to: its checkpoint list (what its disks
    hold; the disks may stay, but a VM created again under the name has other ones)."""
    return [Delete(ctx.keys.vm(name)), Delete(ctx.keys.checkpoints(name))]


async def _delete_with_disks(ctx: ApiContext, name: str) -> TxnResult:
    """Delete the spec and store the disk deletion request, in one transaction."""
    key = ctx.keys.vm(name)
    for _ in range(ATTEMPTS):
        kv = await ctx.store.get(key)
        if kv is None:
            return TxnResult(False, await ctx.store.revision())
        spec = await decode_one(VMSpec, kv, ctx.corrupt)
        on_volumes = tuple(d for d in spec.disks if d.volume is not None)
        ops = _deletes(ctx, name)
        if on_volumes:
            request = DiskDeletion(
                vm=name, disks=on_volumes, requested_at=time.time(), uid=spec.uid
            )
            ops.append(Put(ctx.keys.request(f"delete-disks/{name}"), encode(request)))
        result = await ctx.store.txn([Compare.mod_is(key, kv.mod_revision)], ops)
        if result.succeeded:
            if on_volumes:
                files = ", ".join(d.file for d in on_volumes)
                await ctx.record(
                    "vm.disks_delete_requested",
                    f"vm/{name}",
                    f"deleting disks {files} (each only if the cluster created it for {name} "
                    "and no VM names it)",
                )
            return result
    raise Conflict(f"vm {name!r} kept changing under us; try again")
