"""Joining a host: ``/cluster/ca``, ``/cluster/join-tokens``, ``/join``, ``/join/promote``
(docs/architecture.md, "Joining and evicting hosts").

An admin makes a join token for the name the new host will have; the host sends it with a
certificate signing request for that name (``hvc node join``: its key never leaves it). Any
agent signs it with the cluster CA from etcd, once per token. When the token says the host
is to be an etcd member, the agent adds it as a *learner* (it receives the log but does not
vote, so a member that never comes up cannot cost the cluster its quorum); the host starts
its etcd, and once that has caught up it is promoted to a voter when the cluster wants one
more (store/promotion.py): by the controller, which tries by itself, or here when the host
asks ``/join/promote`` (which answers where it stands: it is how ``hvc node join`` waits).

``/join`` and ``/join/promote`` need no API token (api/auth.py): the join token in the body
is the credential, checked here. ``/cluster/ca`` is open too: the CA certificate is public,
and a joining host checks it against the fingerprint its join token carries before trusting
anything else the API says.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter
from pydantic import ConfigDict, Field

from hvcluster.api.context import ApiContext, Ctx
from hvcluster.api.views import View
from hvcluster.host.pki import PkiError, make_crl, sign_request
from hvcluster.models.base import encode
from hvcluster.models.errors import Conflict, InvalidInput, StoreError, Unauthenticated
from hvcluster.models.join import (
    JOIN_TTL_S,
    ClusterCa,
    IssuedCert,
    JoinToken,
    RevokedCert,
    issue_join,
    should_be_member,
    split_join,
)
from hvcluster.models.names import Name
from hvcluster.store.base import Compare, Delete, Membership, Op, Put
from hvcluster.store.promotion import joined_learners, promote_if_due, say_promoted
from hvcluster.store.reads import Stored, read_one_or_error

router = APIRouter(tags=["join"])

PEER_PORT = 2380


class CaView(View):
    cert_pem: str
    fingerprint: str


class JoinTokenRequest(View):
    model_config = ConfigDict(extra="forbid")
    node: Name
    ttl_s: float = Field(default=JOIN_TTL_S, gt=0, le=7 * 86400.0)
    etcd_member: bool | None = Field(
        default=None,
        description="run an etcd member on the host; default: while the cluster has fewer "
        "than 5 members (voters and learners); a learner is promoted when the cluster wants "
        "another voter (3 from 3 hosts, 5 from 5)",
    )


class JoinTokenCreated(View):
    node: str
    token: str = Field(description="hvcjoin.NODE.SECRET.FINGERPRINT: shown only now")
    expires_at: float
    etcd_member: bool


class JoinRequest(View):
    model_config = ConfigDict(extra="forbid")
    token: str
    csr: str = Field(max_length=16384, description="PEM certificate signing request, CN=node")
    address: str = Field(min_length=1, max_length=253, description="the host's address")
    peer_url: str = Field(default="", description="its etcd peer URL; default https://address:2380")


class EtcdJoin(View):
    member_id: int
    name: str
    initial_cluster: str = Field(description="etcd's --initial-cluster, with this member")


class Joined(View):
    node: str
    cluster: str
    cert_pem: str
    ca_pem: str
    crl_pem: str = Field(description="the revoked certificates now: its etcd's first CRL")
    serial: str
    etcd_endpoints: list[str]
    etcd: EtcdJoin | None


class PromoteRequest(View):
    model_config = ConfigDict(extra="forbid")
    token: str


class Promoted(View):
    node: str
    member_id: int
    voting: bool = Field(description="it votes now; false: it stays a learner (reason says why)")
    reason: str


@router.get("/cluster/ca", response_model=CaView)
async def cluster_ca(ctx: Ctx) -> CaView:
    ca = await _ca(ctx)
    return CaView(cert_pem=ca.cert_pem, fingerprint=ca.fingerprint)


@router.post("/cluster/join-tokens", status_code=201, response_model=JoinTokenCreated)
async def create_join_token(request: JoinTokenRequest, ctx: Ctx) -> JoinTokenCreated:
    """A one-use token for the host that will be node ``node``."""
    ca = await _ca(ctx)
    if await ctx.store.get(ctx.keys.node(request.node)) is not None:
        raise Conflict(f"node {request.node!r} exists: evict it before joining a host by that name")
    member = request.etcd_member
    if member is None:
        member = should_be_member(len(await ctx.store.members()))
    record, token = issue_join(
        request.node,
        ca.cert_pem,
        ttl_s=request.ttl_s,
        etcd_member=member,
        created_by=ctx.actor,
    )
    await ctx.store.put(ctx.keys.join_token(request.node), encode(record))
    said = " with an etcd member" if member else ""
    await ctx.record(
        "node.join.token",
        f"node/{request.node}",
        f"join token made for {request.node}{said}",
        {"expires_at": record.expires_at, "etcd_member": member},
    )
    return JoinTokenCreated(
        node=request.node, token=token, expires_at=record.expires_at, etcd_member=member
    )


@router.post("/join", response_model=Joined)
async def join(request: JoinRequest, ctx: Ctx) -> Joined:
    """Sign the host's request (once per token); add its etcd learner if it is to be one."""
    stored = await _token(ctx, request.token)
    token = stored.value
    if token.serial:
        raise Conflict(
            f"join token for {token.node!r} was used already (certificate {token.serial}): "
            "make a new one"
        )
    ca = await _ca(ctx)
    hosts = [request.address, token.node]
    try:
        signed = await asyncio.to_thread(
            sign_request, ca.cert_pem, ca.key_pem, request.csr, token.node, hosts
        )
    except PkiError as e:
        raise InvalidInput(str(e), field="csr") from None
    etcd: EtcdJoin | None = None
    added: Membership | None = None
    if token.etcd_member:
        peer = request.peer_url or f"https://{_host(request.address)}:{PEER_PORT}"
        await _promote_waiting(ctx, token.node)
        try:
            added = await ctx.store.add_member([peer], learner=True)
        except StoreError as e:
            raise Conflict(f"etcd refused to add {token.node} ({peer}) as a learner: {e}") from e
        etcd = EtcdJoin(
            member_id=added.id,
            name=token.node,
            initial_cluster=await _initial_cluster(ctx, added, token.node),
        )
        await ctx.record(
            "etcd.member.added",
            f"node/{token.node}",
            f"etcd learner {token.node} added ({peer}); it is promoted once its etcd has "
            "caught up, when the cluster wants another voter",
            {"member_id": f"{added.id:x}", "peer_url": peer},
        )
    now = time.time()
    issued = IssuedCert(
        node=token.node,
        serial=signed.serial,
        issued_at=now,
        etcd_member_id=added.id if added else 0,
    )
    key = ctx.keys.join_token(token.node)
    keep = token.model_copy(update={"serial": signed.serial})
    writes: list[Op] = [Put(ctx.keys.issued_cert(token.node), encode(issued))]
    writes.append(Put(key, encode(keep)) if token.etcd_member else Delete(key))
    done = await ctx.store.txn([Compare.mod_is(key, stored.mod_revision)], writes)
    if not done.succeeded:
        if added is not None:
            await ctx.store.remove_member(added.id)
        raise Conflict(f"join token for {token.node!r} was used or changed meanwhile")
    await ctx.record(
        "node.join.certificate",
        f"node/{token.node}",
        f"certificate {signed.serial} issued to {token.node} ({request.address})",
        {"serial": signed.serial, "address": request.address},
    )
    return Joined(
        node=token.node,
        cluster=ctx.keys.cluster,
        cert_pem=signed.cert_pem,
        ca_pem=ca.cert_pem,
        crl_pem=await _crl(ctx, ca),
        serial=signed.serial,
        etcd_endpoints=await _client_urls(ctx),
        etcd=etcd,
    )


async def _promote_waiting(ctx: ApiContext, joining: str) -> None:
    """The learner a 2nd (or 4th) host left, promoted now that ``joining`` makes the hosts
    want another voter: etcd (3.4) takes one learner at a time, so the joining host's would
    be refused while it waits ("too many learner members in cluster")."""
    for learner in await joined_learners(ctx.store, ctx.keys):
        verdict = await promote_if_due(
            ctx.store, ctx.keys, learner.node, learner.member.id, joining=joining
        )
        if verdict.promoted:
            await say_promoted(ctx.record, verdict, f"as {joining} joins")


@router.post("/join/promote", response_model=Promoted)
async def promote(request: PromoteRequest, ctx: Ctx) -> Promoted:
    """Where the host's etcd learner stands, promoting it if it is due (store/promotion.py):
    200 once it votes (the token is spent then) or when it is to stay a learner (``voting``
    false, the reason says why); 409 while etcd refuses it (not started or not caught up:
    ask again). The controller promotes it too, whether or not anyone asks."""
    stored = await _token(ctx, request.token)
    token = stored.value
    issued = await read_one_or_error(ctx.store, ctx.keys.issued_cert(token.node), IssuedCert)
    if not token.serial or not token.etcd_member or not isinstance(issued, Stored):
        raise Conflict(f"join token for {token.node!r} has no etcd learner to promote")
    member_id = issued.value.etcd_member_id
    verdict = await promote_if_due(ctx.store, ctx.keys, token.node, member_id)
    if verdict.retry:
        raise Conflict(verdict.reason)
    if verdict.promoted:
        await say_promoted(ctx.record, verdict, "asked by the joining host")
    if verdict.voting:
        await ctx.store.txn(
            [Compare.mod_is(ctx.keys.join_token(token.node), stored.mod_revision)],
            [Delete(ctx.keys.join_token(token.node))],
        )
    return Promoted(
        node=token.node, member_id=member_id, voting=verdict.voting, reason=verdict.reason
    )


async def _ca(ctx: ApiContext) -> ClusterCa:
    found = await read_one_or_error(ctx.store, ctx.keys.cluster_ca, ClusterCa, ctx.corrupt)
    if not isinstance(found, Stored):
        raise Conflict("this cluster has no CA in etcd ('hvc cluster init' makes one)")
    return found.value


async def _crl(ctx: ApiContext, ca: ClusterCa) -> str:
    snap = await ctx.store.range(ctx.keys.revoked_cert(""))
    revoked = []
    for kv in snap.kvs:
        try:
            r = RevokedCert.model_validate_json(kv.value)
        except ValueError:
            continue  # cannot name it; the agents' CRL writer says so
        revoked.append((r.serial, r.node))
    return await asyncio.to_thread(make_crl, ca.cert_pem, ca.key_pem, revoked)


async def _token(ctx: ApiContext, presented: str) -> Stored[JoinToken]:
    """The join token record ``presented`` names, checked; 401 saying why not."""
    try:
        node, secret, _ = split_join(presented)
    except ValueError as e:
        raise InvalidInput(str(e), field="token") from None
    found = await read_one_or_error(ctx.store, ctx.keys.join_token(node), JoinToken, ctx.corrupt)
    if not isinstance(found, Stored) or not found.value.matches(secret):
        raise Unauthenticated(f"join token for {node!r} is unknown, used, or its secret is wrong")
    if found.value.expired(time.time()):
        raise Unauthenticated(f"join token for {node!r} expired: make a new one")
    return found


async def _initial_cluster(ctx: ApiContext, added: Membership, name: str) -> str:
    """etcd's ``--initial-cluster`` for the new member: every started member and it."""
    entries: list[str] = []
    for m in await ctx.store.members():
        label = name if m.id == added.id else m.name
        if label:
            entries.extend(f"{label}={url}" for url in m.peer_urls)
    return ",".join(entries)


async def _client_urls(ctx: ApiContext) -> list[str]:
    return [u for m in await ctx.store.members() if not m.learner for u in m.client_urls]


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address
