"""``/api/v1/nodes``: list, show, pause, resume. Agents register nodes; the API only changes
a node's admin state, checked against the node lifecycle."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

from fastapi import APIRouter

from hvcluster.api import migrations
from hvcluster.api.context import NO_BODY, ApiContext, Ctx, ValidName
from hvcluster.api.node_use import Found, Use, placed_memory
from hvcluster.api.reads import decode_one, decode_optional, skipped_of
from hvcluster.api.views import ActionRequest, NodeList, NodeView, ResumeRequest, Skipped
from hvcluster.api.writes import update
from hvcluster.models.errors import Conflict, NotFound
from hvcluster.models.lifecycle import NODE_LIFECYCLE, NodeAdminState
from hvcluster.models.node import Node, NodeAlive
from hvcluster.models.usage import NodeUsage
from hvcluster.models.vm import Placement, VMSpec
from hvcluster.store.base import Get, KeyValue
from hvcluster.store.reads import read_snapshot

router = APIRouter(prefix="/nodes", tags=["nodes"])


def watchdog_state(node: Node) -> str:
    if node.watchdog is None:
        return "unknown"
    return "ok" if node.watchdog.acknowledging else "not acknowledging"


def view(
    node: Node,
    alive: NodeAlive | None,
    alive_present: bool,
    vms: int,
    usage: NodeUsage | None = None,
    memory_mib: int = 0,
) -> NodeView:
    return NodeView(
        name=node.name,
        alive=alive_present,
        alive_since=alive.since if alive else None,
        admin_state=node.admin_state.value,
        vms=vms,
        node=node,
        heartbeat=alive,
        watchdog=watchdog_state(node),
        cpu_used_cores=usage.host_cores if usage else None,
        cpu_window_s=usage.window_s if usage else None,
        cpu_measured_at=usage.at if usage else None,
        memory_placed_mib=memory_mib,
    )


@router.get("", response_model=NodeList)
async def list_nodes(ctx: Ctx) -> NodeList:
    kinds = ("nodes", "alive", "placements", "vms", "usage")
    snap = await read_snapshot(ctx.store, ctx.keys, kinds)
    nodes = await snap.decoded(Node, "nodes", ctx.corrupt)
    alive = await snap.decoded(NodeAlive, "alive", ctx.corrupt)
    placements, specs = await _uses(ctx, snap.by_kind["placements"], snap.by_kind["vms"])
    usages = await snap.decoded(NodeUsage, "usage", ctx.corrupt)
    # A key under alive/ that does not decode still proves the lease is held.
    present = {ctx.keys.name_of(kv.key, "alive") for kv in snap.by_kind["alive"]}
    per_node = Counter(p.node for p in placements.items.values())
    memory = placed_memory(placements.items, specs.items)
    views = []
    for name, node in nodes.by_name().items():
        views.append(
            view(node, alive.get(name), name in present, per_node[name], usages.get(name),
                 memory[name])
        )  # fmt: skip
    skipped = skipped_of(nodes, alive) + _skipped(placements, specs) + skipped_of(usages)
    return NodeList(nodes=views, skipped=skipped, revision=snap.revision)


async def _uses(
    ctx: ApiContext, placements: Sequence[KeyValue], specs: Sequence[KeyValue]
) -> tuple[Found[Use], Found[Use]]:
    """What the views need of every placement and spec (api/node_use.py: decoded only when
    changed since this API's last call)."""
    use, keys = ctx.node_use, ctx.keys
    return (
        await use.placements.read(keys.prefix("placements"), placements, ctx.corrupt),
        await use.specs.read(keys.prefix("vms"), specs, ctx.corrupt),
    )


def _skipped(*found: Found[Use]) -> list[Skipped]:
    return [Skipped(key=e.key, error=e.reason) for f in found for e in f.corrupt]


async def _load(ctx: ApiContext, name: str) -> NodeView:
    keys = ctx.keys
    result = await ctx.store.txn(
        (),
        [
            Get(keys.node(name)),
            Get(keys.alive(name)),
            Get(keys.prefix("placements"), True),
            Get(keys.prefix("vms"), True),
            Get(keys.usage(name)),
        ],
    )
    node_found, alive_found, placement_kvs, spec_kvs, usage_found = result.gets
    if not node_found:
        raise NotFound(f"node {name!r} not found")
    node = await decode_one(Node, node_found[0], ctx.corrupt)
    skipped: list[Skipped] = []
    alive = await decode_optional(
        NodeAlive, alive_found[0] if alive_found else None, ctx.corrupt, skipped
    )
    placements, specs = await _uses(ctx, placement_kvs, spec_kvs)
    usage = await decode_optional(
        NodeUsage, usage_found[0] if usage_found else None, ctx.corrupt, skipped
    )
    vms = sum(1 for p in placements.items.values() if p.node == name)
    memory = placed_memory(placements.items, specs.items)[name]
    return view(node, alive, bool(alive_found), vms, usage, memory)


@router.get("/{name}", response_model=NodeView)
async def show_node(name: ValidName, ctx: Ctx) -> NodeView:
    return await _load(ctx, name)


async def _set_admin(
    ctx: ApiContext,
    name: str,
    target: NodeAdminState,
    reason: str,
    clear_quarantine: bool = False,
    extra: dict[str, object] | None = None,
) -> NodeView:
    """Move the node's admin state to ``target`` (and set ``extra`` fields with it, in the
    same compare-and-set)."""
    extra = extra or {}

    def change(node: Node) -> Node | None:
        if node.admin_state == target:
            return node.model_copy(update=extra) if extra else None
        if node.admin_state is NodeAdminState.QUARANTINED and not clear_quarantine:
            until = node.quarantined_until
            when = f" until {time.strftime('%H:%M:%S', time.localtime(until))}" if until else ""
            raise Conflict(
                f"node {name} is quarantined{when} after repeated failures; "
                "resume it with clear_quarantine to override"
                if target is NodeAdminState.UP
                else f"node {name} is quarantined{when}; resume it with clear_quarantine first"
            )
        NODE_LIFECYCLE.check(node.admin_state, target)
        fields: dict[str, object] = {
            "admin_state": target,
            "admin_reason": reason,
            "admin_since": ctx.now(),
            **extra,
        }
        if node.admin_state is NodeAdminState.QUARANTINED:
            fields["quarantined_until"] = None
            fields["failures_forgiven_at"] = fields["admin_since"]
        return node.model_copy(update=fields)

    done = await update(
        ctx.store, ctx.keys.node(name), Node, change, what=f"node {name!r}", report=ctx.corrupt
    )
    if done.changed:
        kind = "node.paused" if target is NodeAdminState.PAUSED else "node.resumed"
        await ctx.record(
            kind,
            f"node/{name}",
            reason,
            {
                "from": done.before.admin_state.value,
                "to": target.value,
                "revision": done.revision,
                **({"failback_held": ",".join(sorted(done.after.failback_held))} if extra else {}),
            },
        )
    return await _load(ctx, name)


@router.post("/{name}/pause", status_code=202, response_model=NodeView)
async def pause_node(
    name: ValidName, ctx: Ctx, request: ActionRequest | None = NO_BODY
) -> NodeView:
    """No new VMs are placed on a paused node; those on it keep running."""
    reason = request.reason if request and request.reason else "paused by an administrator"
    return await _set_admin(ctx, name, NodeAdminState.PAUSED, reason)


@router.post("/{name}/resume", status_code=202, response_model=NodeView)
async def resume_node(
    name: ValidName, ctx: Ctx, request: ResumeRequest | None = NO_BODY
) -> NodeView:
    """The node takes VMs again. ``failback``: ``none``, the VMs away from it now stay
    where they are (until they next move), whatever their own failback policy says;
    ``policy``, each VM's failback policy decides; ``immediate``, every VM drained off it
    moves back now (live)."""
    reason = request.reason if request and request.reason else "resumed by an administrator"
    clear = bool(request and request.clear_quarantine)
    failback = request.failback if request is not None else "policy"
    held = await _away_from(ctx, name) if failback == "none" else {}
    if held:
        reason += (
            f"; failback none: {len(held)} VM(s) away from it stay where they are "
            f"until they next move ({', '.join(sorted(held))})"
        )
    elif failback == "none":
        reason += "; failback none (no VM of it is away)"
    else:
        reason += f"; failback {failback}"
    resumed = await _set_admin(ctx, name, NodeAdminState.UP, reason, clear, {"failback_held": held})
    if failback == "immediate":
        await migrations.fail_back(ctx, name)
    return resumed


async def _away_from(ctx: ApiContext, name: str) -> dict[str, int]:
    """VMs that would fail back to ``name`` by their own policy (it is one of their preferred
    owners) but are placed elsewhere: each with its placement epoch now."""
    snap = await read_snapshot(ctx.store, ctx.keys, ("vms", "placements"))
    specs = await snap.decoded(VMSpec, "vms", ctx.corrupt)
    placements = await snap.decoded(Placement, "placements", ctx.corrupt)
    held = {}
    for vm, placement in placements.by_name().items():
        spec = specs.get(vm)
        if spec is None or placement.node == name:
            continue
        if name in spec.ha.preferred_owners:
            held[vm] = placement.epoch
    return held
