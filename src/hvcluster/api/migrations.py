"""Moving VMs: ``POST /vms/{name}/move``, ``/migrations``, node drain and failback on resume.

The API stores a ``requested`` migration record and answers 202 with it; the controller and
the two agents carry it out (see :mod:`hvcluster.agent.migration`). It refuses (409, with the
reason) what cannot work now: a VM that is not running, one already moving, a target that
cannot take it by the one fitting rule (:mod:`hvcluster.models.fit`: not alive or not up, not
a possible owner, lacking a switch, a volume, the CPU model or the capacity, ...). The
controller checks again before the transfer begins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from hvcluster.api.context import NO_BODY, ApiContext, Ctx, ValidName
from hvcluster.api.jobs import created, refuse_if_busy
from hvcluster.api.reads import decode_one
from hvcluster.api.views import ActionRequest, View
from hvcluster.api.writes import update
from hvcluster.models.base import Model
from hvcluster.models.config import COUNT_MAX
from hvcluster.models.errors import Conflict, InvalidInput, NotFound
from hvcluster.models.fit import Target, resident, why_not_move
from hvcluster.models.guestcpu import vm_cpu_model
from hvcluster.models.lifecycle import NODE_LIFECYCLE, MigrationState, NodeAdminState, VMState
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.models.node import Node
from hvcluster.models.storage import disks_to_move, spec_on_volume
from hvcluster.models.vm import Placement, VMSpec, VMStatus
from hvcluster.store.checkpoints import lost_by_copy
from hvcluster.store.migrations import change_migration, create_migration, read_migrations
from hvcluster.store.reads import read_snapshot

M = TypeVar("M", bound=Model)

router = APIRouter(tags=["migrations"])


class MoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelled "to": any node would do
    to: str = Field(
        default="", max_length=63, description="target node; empty: the scheduler picks one"
    )
    kind: Literal["live", "quick"] = "live"
    reason: str = Field(default="", max_length=500)
    with_storage: str = Field(
        default="",
        max_length=63,
        description="shared-nothing: copy the VM's disks to this volume of the target (live)",
    )
    max_bandwidth_mib_s: int | None = Field(
        default=None,
        gt=0,
        le=COUNT_MAX,
        description="live: this migration's bandwidth cap in MiB/s (precopy and postcopy), "
        "over the cluster's migration.max_bandwidth_mib_s",
    )


class MigrationList(View):
    migrations: list[Migration]
    revision: int


class Cluster:
    """What a move request is checked against, read in one transaction."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.nodes: dict[str, Node] = {}
        self.alive: set[str] = set()
        self.specs: dict[str, VMSpec] = {}
        self.placements: dict[str, Placement] = {}
        self.statuses: dict[str, VMStatus] = {}
        self.migrations: list[Migration] = []
        self.revision = 0  # of the read

    async def load(self) -> Cluster:
        ctx = self.ctx
        kinds = ("nodes", "alive", "vms", "placements", "status", "migrations")
        snap = await read_snapshot(ctx.store, ctx.keys, kinds)
        self.alive = snap.names("alive")
        self.nodes = (await snap.decoded(Node, "nodes", ctx.corrupt)).by_name()
        self.specs = (await snap.decoded(VMSpec, "vms", ctx.corrupt)).by_name()
        self.placements = (await snap.decoded(Placement, "placements", ctx.corrupt)).by_name()
        self.statuses = (await snap.decoded(VMStatus, "status", ctx.corrupt)).by_name()
        self.migrations = (await snap.decoded(Migration, "migrations", ctx.corrupt)).values()
        self.revision = snap.revision
        return self

    def spec(self, vm: str) -> VMSpec:
        """The spec of ``vm``; an unknown VM is refused (404)."""
        spec = self.specs.get(vm)
        if spec is None:
            raise NotFound(f"vm {vm!r} not found")
        return spec

    def active(self, vm: str) -> Migration | None:
        return next((m for m in self.migrations if m.vm == vm and m.active), None)

    def why_not(
        self, spec: VMSpec, node: str, source: str, kind: MigrationKind = MigrationKind.LIVE
    ) -> str | None:
        """Why ``node`` cannot take ``spec`` now by a ``kind`` migration from ``source``
        (the CPU model the VM runs with included), or None: the rule of
        :func:`hvcluster.models.fit.why_not_move`, on what this request read."""
        src = self.nodes.get(source)
        there = {v for v, p in self.placements.items() if p.node == node}
        there |= {m.vm for m in self.migrations if m.active and m.target == node}
        specs = [self.specs[v] for v in sorted(there) if v in self.specs and v != spec.name]
        target = Target(
            node,
            self.nodes.get(node),
            node in self.alive,
            sum(s.vcpus for s in specs),
            sum(s.memory_mib for s in specs),
            tuple(resident(s) for s in specs),
        )
        model = vm_cpu_model(spec, self.statuses.get(spec.name), src)
        return why_not_move(spec, model, src, target, kind)


@router.post("/vms/{name}/move", status_code=202, response_model=Migration)
async def move_vm(name: ValidName, ctx: Ctx, request: MoveRequest | None = NO_BODY) -> Migration:
    """Move a running VM to another node, live (memory copied while it runs) or quick (its
    state saved and restored). Returns the migration record; follow it under /migrations."""
    request = request or MoveRequest()
    cluster = await Cluster(ctx).load()
    spec = cluster.spec(name)
    placement, status = cluster.placements.get(name), cluster.statuses.get(name)
    running = (
        placement is not None
        and status is not None
        and status.state is VMState.RUNNING
        and (status.node, status.epoch) == (placement.node, placement.epoch)
    )
    if not running or placement is None:
        state = status.state.value if status else "not reported"
        raise Conflict(f"vm {name} is not running ({state}); only a running VM moves")
    await refuse_if_busy(ctx, name)
    source = placement.node
    if request.max_bandwidth_mib_s is not None and request.kind != "live":
        raise InvalidInput(
            "a bandwidth cap is for a live migration (a quick one saves to a file)",
            field="max_bandwidth_mib_s",
        )
    if request.with_storage:
        spec = await shared_nothing_spec(ctx, spec, request)  # the target must see its volume
    if request.to:
        why = cluster.why_not(spec, request.to, source, MigrationKind(request.kind))
        if why is not None:
            raise Conflict(f"cannot move {name} to {request.to}: {why}")
    else:
        reasons = [
            why
            for node in sorted(cluster.nodes)
            if node != source
            and (why := cluster.why_not(spec, node, source, MigrationKind(request.kind)))
        ]
        if len(reasons) == len(cluster.nodes) - 1:
            detail = "; ".join(reasons) or "there is no other node"
            raise Conflict(f"no node can take {name}: {detail}")
    stored = await create_migration(
        ctx.store,
        ctx.keys,
        name,
        source,
        request.to,
        placement.epoch,
        MigrationKind(request.kind),
        "api",
        volume=request.with_storage,
        max_bandwidth_mib_s=request.max_bandwidth_mib_s,
    )
    rec = await created(ctx, name, stored, "the migration record")
    where = request.to or "a node the scheduler picks"
    if request.max_bandwidth_mib_s is not None:
        where += f", capped at {request.max_bandwidth_mib_s} MiB/s"
    await ctx.record(
        "migration.requested",
        f"vm/{name}",
        request.reason or f"{request.kind} migration of {name} from {source} to {where}",
        {
            "id": rec.id,
            "kind": request.kind,
            "source": source,
            "target": request.to,
            "max_bandwidth_mib_s": request.max_bandwidth_mib_s,
        },
    )
    return rec


async def shared_nothing_spec(ctx: ApiContext, spec: VMSpec, request: MoveRequest) -> VMSpec:
    """The spec as it will be on the target of a shared-nothing move (every disk on the
    requested volume), after checking the request can work."""
    volume = request.with_storage
    if request.kind != "live":
        raise InvalidInput("a shared-nothing move is live", field="kind")
    if await ctx.store.get(ctx.keys.volume(volume)) is None:
        raise NotFound(f"volume {volume!r} not found")
    moving = disks_to_move(spec, volume)
    if not spec.disks or len(moving) != len(spec.disks):
        kept = [i for i in range(len(spec.disks)) if i not in moving]
        why = f"disks {kept} are read-only or on {volume!r} already" if kept else "no disk"
        raise Conflict(f"a shared-nothing move of {spec.name} copies every disk: {why}")
    lost = await lost_by_copy(ctx.store, ctx.keys, spec, "a shared-nothing migration")
    if lost is not None:
        raise Conflict(lost)
    return spec_on_volume(spec, volume)


@router.get("/migrations", response_model=MigrationList)
async def list_migrations(ctx: Ctx) -> MigrationList:
    found = await read_migrations(ctx.store, ctx.keys)
    records = sorted((s.value for s in found.items.values()), key=lambda m: m.created)
    return MigrationList(migrations=records, revision=await ctx.store.revision())


@router.get("/migrations/{mid}", response_model=Migration)
async def show_migration(mid: str, ctx: Ctx) -> Migration:
    kv = await ctx.store.get(ctx.keys.migration(_valid_id(mid)))
    if kv is None:
        raise NotFound(f"migration {mid!r} not found")
    return await decode_one(Migration, kv, ctx.corrupt)


@router.post("/migrations/{mid}/cancel", status_code=202, response_model=Migration)
async def cancel_migration(
    mid: str, ctx: Ctx, request: ActionRequest | None = NO_BODY
) -> Migration:
    """Cancel a migration before the placement flips; the VM keeps running on its source."""
    reason = request.reason if request and request.reason else "cancelled by an administrator"
    cancel = cancelling(f"migration {mid}", reason)
    done = await change_migration(ctx.store, ctx.keys, _valid_id(mid), cancel)
    if done is not None:
        await ctx.record("migration.cancelled", f"vm/{done.vm}", f"migration {mid}: {reason}")
    return await show_migration(mid, ctx)


def cancelling(what: str, reason: str) -> Callable[[Migration], Migration | None]:
    """The change that cancels the job ``what`` (a migration or a storage move) with
    ``reason``: nothing if it is cancelled already, 409 once it has switched or ended."""

    def cancel(cur: Migration) -> Migration | None:
        if cur.state is MigrationState.CANCELLED:
            return None
        if cur.state in (MigrationState.SWITCHING, MigrationState.DONE):
            raise Conflict(f"{what} is {cur.state.value}: too late to cancel")
        if not cur.active:
            raise Conflict(f"{what} is {cur.state.value} already")
        return cur.model_copy(update={"state": MigrationState.CANCELLED, "reason": reason})

    return cancel


def valid_id(mid: str, what: str) -> str:
    try:
        return Migration.model_validate({"id": mid, "vm": "x", "source": "x"}).id
    except ValueError as e:
        raise InvalidInput(f"invalid {what} id {mid!r}", field="id") from e


def _valid_id(mid: str) -> str:
    return valid_id(mid, "migration")


# --- drain and failback ---------------------------------------------------------------
@router.post("/nodes/{name}/drain", status_code=202, response_model=Node)
async def drain_node(name: ValidName, ctx: Ctx, request: ActionRequest | None = NO_BODY) -> Node:
    """Move every VM off the node (live, at most ``migration.max_parallel_per_node`` at
    once); the node ends paused. Follow it with GET /nodes/{name} (admin_state)."""
    reason = request.reason if request and request.reason else "drained by an administrator"

    def drain(node: Node) -> Node | None:
        if node.admin_state is NodeAdminState.DRAINING:
            return None
        NODE_LIFECYCLE.check(node.admin_state, NodeAdminState.DRAINING)
        return node.model_copy(
            update={
                "admin_state": NodeAdminState.DRAINING,
                "admin_reason": reason,
                "admin_since": ctx.now(),
            }
        )

    done = await update(
        ctx.store, ctx.keys.node(name), Node, drain, what=f"node {name!r}", report=ctx.corrupt
    )
    if done.changed:
        await ctx.record("node.draining", f"node/{name}", reason, {"revision": done.revision})
    return done.after


async def fail_back(ctx: ApiContext, node: str) -> list[Migration]:
    """Resume with ``failback=immediate``: move back live every VM drained off ``node``
    that still runs where the drain put it (on its target, at the epoch of that move)."""
    cluster = await Cluster(ctx).load()
    made = []
    drained = [
        m
        for m in cluster.migrations
        if m.source == node and m.requested_by == f"drain:{node}" and m.state is MigrationState.DONE
    ]
    for m in sorted(drained, key=lambda m: m.created):
        placement, spec = cluster.placements.get(m.vm), cluster.specs.get(m.vm)
        if spec is None or placement is None:
            continue
        if (placement.node, placement.epoch) != (m.target, m.epoch + 1):
            continue
        if cluster.active(m.vm):
            continue
        # Its status may not say running yet (that move ended a moment ago): the controller
        # waits for it before the transfer begins.
        if cluster.why_not(spec, node, placement.node) is not None:
            continue
        rec = await create_migration(
            ctx.store,
            ctx.keys,
            m.vm,
            placement.node,
            node,
            placement.epoch,
            MigrationKind.LIVE,
            f"resume:{node}",
        )
        if rec is not None:
            made.append(rec)
            cluster.migrations.append(rec)
            await ctx.record(
                "migration.requested",
                f"vm/{m.vm}",
                f"fail back {m.vm} to {node} now that it is resumed",
                {"id": rec.id, "kind": "live", "source": placement.node, "target": node},
            )
    return made
