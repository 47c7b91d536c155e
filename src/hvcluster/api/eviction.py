"""``POST /cluster/nodes/{name}/evict``: a host leaves the cluster for good (admin).

Drain first: a node with VMs placed on it is drained (its VMs move live, as ``hvc node
drain``) and the call answers 409 saying so; the caller asks again once the drain ended
(``hvc node evict`` follows it): until the controller has judged it complete, not only
until the last VM moved. A drain that ended with VMs left (they could not move)
makes eviction refuse, naming them and the drain's reason. Once no VM is placed there:

1. its etcd member (if it has one) is removed; etcd refuses when that would leave the
   members without a connected quorum, and then nothing else has changed;
2. in one transaction: its node and liveness records go, the record of its certificate is
   replaced by a revocation (``pki/revoked/<serial>``), and any join token for its name goes.
   The transaction is guarded on the node record and on "no placement written since the
   check", so a VM placed there meanwhile fails it (ask again).

What revocation means here (docs/architecture.md): the serial is recorded in etcd, and an
agent refuses to start with a revoked certificate (agent/revocation.py). etcd and the API's
TLS still accept the certificate until they are given a CRL: the key must be considered
compromised if the host is, and the cluster CA re-made if that matters.
"""

from __future__ import annotations

import time

from fastapi import APIRouter

from hvcluster.api import migrations
from hvcluster.api.context import NO_BODY, ApiContext, Ctx, ValidName
from hvcluster.api.views import ActionRequest, View
from hvcluster.models.base import encode
from hvcluster.models.errors import Conflict, NotFound, StoreError
from hvcluster.models.join import IssuedCert, RevokedCert
from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.models.node import Node
from hvcluster.models.vm import Placement
from hvcluster.store.base import Compare, Delete, Op, Put
from hvcluster.store.reads import Stored, read_one_or_error, read_snapshot

router = APIRouter(tags=["join"])

NAMED = 10


class Evicted(View):
    node: str
    etcd_member_removed: str = ""  # its member id in hex, if it had one
    revoked_serial: str = ""
    revision: int


@router.post("/cluster/nodes/{name}/evict", response_model=Evicted)
async def evict_node(name: ValidName, ctx: Ctx, request: ActionRequest | None = NO_BODY) -> Evicted:
    reason = request.reason if request and request.reason else "evicted by an administrator"
    node_key = ctx.keys.node(name)
    snap = await read_snapshot(ctx.store, ctx.keys, ("placements",))
    found = await read_one_or_error(ctx.store, node_key, Node, ctx.corrupt)
    if found is None:
        raise NotFound(f"node {name!r} not found")
    node = found.value if isinstance(found, Stored) else None
    placements = await snap.decoded(Placement, "placements", ctx.corrupt)
    here = sorted(vm for vm, p in placements.by_name().items() if p.node == name)
    if here:
        await _refuse_until_drained(ctx, name, node, here, reason)
    if node is not None and node.admin_state is NodeAdminState.DRAINING:
        # Its last VM moved, but the controller has not yet judged the drain complete:
        # evicting now would delete the node under it, and the drain's end go unsaid.
        raise Conflict(
            f"node {name} is draining, no VM left: evict it once the drain is complete "
            "(the controller says so at its next cycle)"
        )
    issued = await read_one_or_error(ctx.store, ctx.keys.issued_cert(name), IssuedCert)
    cert = issued.value if isinstance(issued, Stored) else None
    removed = await _remove_member(ctx, name, cert)
    ops: list[Op] = [
        Delete(node_key),
        Delete(ctx.keys.alive(name)),
        Delete(ctx.keys.usage(name)),  # its CPU use, for the balancer
        Delete(ctx.keys.join_token(name)),
    ]
    if cert is not None:
        revoked = RevokedCert(serial=cert.serial, node=name, revoked_at=time.time(), reason=reason)
        ops += [
            Delete(ctx.keys.issued_cert(name)),
            Put(ctx.keys.revoked_cert(cert.serial), encode(revoked)),
        ]
    guard = [Compare.unchanged_since(ctx.keys.prefix("placements"), snap.revision)]
    if isinstance(found, Stored):
        guard.append(Compare.mod_is(node_key, found.mod_revision))
    done = await ctx.store.txn(guard, ops)
    if not done.succeeded:
        raise Conflict(f"node {name!r} or a VM placement changed while evicting it: ask again")
    await ctx.record("node.evicted", f"node/{name}", reason, {"revision": done.revision})
    if cert is not None:
        await ctx.record(
            "node.certificate.revoked",
            f"node/{name}",
            f"certificate {cert.serial} of {name} revoked: its agent will not start with it",
            {"serial": cert.serial},
        )
    return Evicted(
        node=name,
        etcd_member_removed=removed,
        revoked_serial=cert.serial if cert else "",
        revision=done.revision,
    )


async def _refuse_until_drained(
    ctx: ApiContext, name: str, node: Node | None, here: list[str], reason: str
) -> None:
    """Always raises: :class:`Conflict` saying what stands in the way (a drain is started
    when none ran yet)."""
    vms = ", ".join(here[:NAMED]) + (f" and {len(here) - NAMED} more" if len(here) > NAMED else "")
    if node is None:
        raise Conflict(
            f"node {name!r}: its record does not decode and VM(s) {vms} are placed there"
        )
    if node.admin_state is NodeAdminState.DRAINING:
        raise Conflict(
            f"node {name} is draining, {len(here)} VM(s) left ({vms}): evict it once drained"
        )
    if node.admin_state is NodeAdminState.PAUSED and "stayed" in node.admin_reason:
        raise Conflict(
            f"node {name} cannot be evicted: VM(s) {vms} cannot move off it "
            f"({node.admin_reason}); move or delete them first"
        )
    await migrations.drain_node(name, ctx, ActionRequest(reason=f"{reason}: drain first"))
    raise Conflict(
        f"node {name} has {len(here)} VM(s) ({vms}): draining it now; evict it once drained"
    )


async def _remove_member(ctx: ApiContext, name: str, cert: IssuedCert | None) -> str:
    """Remove the node's etcd member (found by its id, else by its name); its id in hex."""
    members = await ctx.store.members()
    wanted = cert.etcd_member_id if cert is not None else 0
    mine = [m for m in members if (wanted and m.id == wanted) or (m.name and m.name == name)]
    if not mine:
        return ""
    member = mine[0]
    try:
        # (the store asks again while etcd says "unhealthy cluster": store/etcd_members.py)
        await ctx.store.remove_member(member.id)
    except NotFound:
        return ""
    except StoreError as e:
        raise Conflict(f"etcd refused to remove member {name} ({member.id:x}): {e}") from e
    await ctx.record(
        "etcd.member.removed",
        f"node/{name}",
        f"etcd member {name} ({member.id:x}) removed",
        {"member_id": f"{member.id:x}", "was_learner": member.learner},
    )
    return f"{member.id:x}"
