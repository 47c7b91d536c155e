"""``GET /api/v1/cluster/validate`` (the report of ``hvc cluster validate``) and
``GET /api/v1/probe`` (what one agent answers another for it).

The API drives no hypervisor: what it checks is what the nodes report in the store, plus
what it measures itself when asked: can each alive node's agent open a TCP connection to
every other's API (each agent is asked through its own ``/probe``), how far each agent's
wall clock is from this one (a timestamp in the probe's answer, against the middle of the
request), and etcd's health. The checks themselves are pure (:mod:`hvcluster.validate`).

A probe only ever connects to the API address of a registered node: any other target is
refused (422), so this endpoint cannot be used to scan a network.

The migration port is probed as a migration uses it: the source's agent asks the target's
(``POST /probe/listen``) to open a short-lived listener on its migration address at a free
port, as QEMU's incoming migration does, then connects to it and reads its token
(``GET /probe?migration=<node>``; see :mod:`hvcluster.api.listen`). It only connects to
the registered address of a registered node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import httpx
from fastapi import APIRouter, Query

from hvcluster.api.context import ApiContext, Ctx
from hvcluster.api.listen import ListenRefused, open_listener, reach_listener, split
from hvcluster.models.errors import InvalidInput, StoreError
from hvcluster.models.lifecycle import VMState
from hvcluster.models.node import Node
from hvcluster.models.storage import Switch, Volume
from hvcluster.models.validation import (
    ClockOffset,
    EtcdFacts,
    EtcdMemberFacts,
    ListenAnswer,
    Probe,
    ProbeAnswer,
    ValidationFacts,
    ValidationReport,
)
from hvcluster.models.vm import VMStatus
from hvcluster.store.base import Store
from hvcluster.store.health import has_quorum
from hvcluster.store.reads import read_snapshot
from hvcluster.validate import validate

router = APIRouter(tags=["cluster"])

CONNECT_TIMEOUT_S = 2.0  # one TCP connection attempt of a probe
ASK_TIMEOUT_S = 3.0  # asking another agent (its probe included)
HEALTH_TIMEOUT_S = 3.0
CLOCK_SAMPLES = 3  # the sample with the shortest round trip is kept
MAX_ASKS = 16  # requests to other agents in flight at once
# Asking a source to probe a target's migration port: it asks the target to listen, then
# connects and reads the greeting.
MIGRATION_ASK_TIMEOUT_S = ASK_TIMEOUT_S + 2 * CONNECT_TIMEOUT_S + 1.0

# VMs whose guest CPU state exists on a node (what a live or quick migration carries off)
RUNS = frozenset({VMState.RUNNING, VMState.PAUSED, VMState.MIGRATING})


def api_address(node: Node) -> str:
    """``host:port`` of the node's agent API (``[v6]:port`` for an IPv6 address)."""
    host = f"[{node.address}]" if ":" in node.address else node.address
    return f"{host}:{node.api_port}"


async def tcp_probe(address: str, timeout: float = CONNECT_TIMEOUT_S) -> tuple[bool, float, str]:
    """``(reachable, latency_ms, error)`` of one TCP connection to ``address``."""
    host, port = split(address)
    started = time.monotonic()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return False, (time.monotonic() - started) * 1000, f"no answer in {timeout:.0f} s"
    except OSError as e:
        why = os.strerror(e.errno).lower() if e.errno else str(e)
        return False, (time.monotonic() - started) * 1000, why
    latency = (time.monotonic() - started) * 1000
    writer.close()
    with contextlib.suppress(OSError):  # it answered; how it hung up does not matter
        await writer.wait_closed()
    return True, latency, ""


async def _nodes(ctx: ApiContext) -> list[Node]:
    snap = await read_snapshot(ctx.store, ctx.keys, ("nodes",))
    decoded = await snap.decoded(Node, "nodes", ctx.corrupt)
    return decoded.values()


@router.get("/probe", response_model=ProbeAnswer)
async def probe(
    ctx: Ctx,
    target: str | None = Query(
        default=None,
        description="host:port of a registered node's agent API; without it, only this "
        "agent's clock is answered",
    ),
    migration: str | None = Query(
        default=None,
        description="a registered node: can this agent reach a listener that node opens on "
        "its migration address, as for an incoming migration?",
    ),
) -> ProbeAnswer:
    """Can this agent open a TCP connection to ``target`` (or to ``migration``'s migration
    address)? With this agent's wall clock."""
    if migration is not None:
        nodes = {n.name: n for n in await _nodes(ctx)}
        if migration not in nodes:
            raise InvalidInput(f"{migration!r} is not a registered node", field="migration")
        async with ctx.peers.client(timeout=ASK_TIMEOUT_S, headers=ctx.forwarded_headers()) as http:
            found = await _migration_probe(http, ctx.peers.scheme, ctx.node, nodes[migration])
        return ProbeAnswer(
            node=ctx.node,
            time=time.time(),
            target=found.address,
            reachable=found.reachable,
            latency_ms=found.latency_ms,
            error=found.error,
            asked=found.asked,
        )
    if target is None:
        return ProbeAnswer(node=ctx.node, time=time.time())
    allowed = {api_address(n) for n in await _nodes(ctx)}
    if target not in allowed:
        raise InvalidInput(
            f"target {target!r} is not the agent API address of a registered node "
            "(probes go nowhere else)",
            field="target",
        )
    reachable, latency, error = await tcp_probe(target)
    return ProbeAnswer(
        node=ctx.node,
        time=time.time(),
        target=target,
        reachable=reachable,
        latency_ms=latency if reachable else None,
        error=error,
    )


@router.post("/probe/listen", response_model=ListenAnswer)
async def probe_listen(ctx: Ctx) -> ListenAnswer:
    """Open a short-lived TCP listener on this node's migration address (its registered
    migration_address, else its address: where QEMU listens for an incoming migration) at
    a free port, as an incoming migration does; it greets one connection with the token
    answered here, then closes."""
    me = next((n for n in await _nodes(ctx) if n.name == ctx.node), None)
    if me is None:
        return ListenAnswer(node=ctx.node, error=f"{ctx.node} is not registered")
    try:
        address, token = await open_listener(me.migration_host)
    except ListenRefused as e:
        return ListenAnswer(node=ctx.node, error=str(e))
    return ListenAnswer(node=ctx.node, address=address, token=token)


async def _migration_probe(
    http: httpx.AsyncClient, scheme: str, source: str, target: Node
) -> Probe:
    """From this agent (``source``): ask ``target``'s agent to listen on its migration
    address, connect to that listener, read its token."""
    base = {"source": source, "target": target.name, "kind": "migration"}
    try:
        response = await http.post(f"{scheme}://{api_address(target)}/api/v1/probe/listen")
        response.raise_for_status()
        listen = ListenAnswer.model_validate_json(response.content)
    except (httpx.HTTPError, ValueError) as e:
        why = f"{target.name}'s agent could not be asked to open a listener: {_why(e)}"
        return Probe(**base, address=target.migration_host, reachable=False, asked=False, error=why)
    if listen.error:
        why = f"{target.name} could not open a listener on its migration address: {listen.error}"
        return Probe(**base, address=target.migration_host, reachable=False, error=why)
    if split(listen.address)[0] != target.migration_host:
        where = target.migration_host
        why = f"{target.name} listened at {listen.address}, not on its migration address {where}"
        return Probe(**base, address=listen.address, reachable=False, error=why)
    reached, latency, error = await reach_listener(listen.address, listen.token, CONNECT_TIMEOUT_S)
    return Probe(
        **base,
        address=listen.address,
        reachable=reached,
        latency_ms=latency if reached else None,
        error=error,
    )


async def _probe_migration_pair(
    ctx: ApiContext, http: httpx.AsyncClient, source: Node, target: Node
) -> Probe:
    if source.name == ctx.node:
        return await _migration_probe(http, ctx.peers.scheme, source.name, target)
    base = {"source": source.name, "target": target.name, "kind": "migration"}
    try:
        response = await http.get(
            _url(source, ctx.peers.scheme),
            params={"migration": target.name},
            timeout=MIGRATION_ASK_TIMEOUT_S,
        )
        response.raise_for_status()
        answer = ProbeAnswer.model_validate_json(response.content)
    except (httpx.HTTPError, ValueError) as e:
        where = target.migration_host
        return Probe(**base, address=where, reachable=False, asked=False, error=_why(e))
    return Probe(
        **base,
        address=answer.target or target.migration_host,
        reachable=bool(answer.reachable),
        latency_ms=answer.latency_ms,
        error=answer.error,
        asked=answer.asked,
    )


def _url(node: Node, scheme: str) -> str:
    return f"{scheme}://{api_address(node)}/api/v1/probe"


def _why(error: Exception) -> str:
    if isinstance(error, httpx.TimeoutException):
        return f"its agent did not answer in {ASK_TIMEOUT_S:.0f} s"
    if isinstance(error, httpx.ConnectError):
        return f"cannot connect to its agent at {error.request.url.netloc.decode()}"
    return f"{type(error).__name__}: {error}"


async def _ask(http: httpx.AsyncClient, scheme: str, node: Node, target: str | None) -> ProbeAnswer:
    params = {"target": target} if target is not None else {}
    response = await http.get(_url(node, scheme), params=params)
    if response.is_error:
        raise httpx.HTTPStatusError(
            f"HTTP {response.status_code}: {response.text[:200]}",
            request=response.request,
            response=response,
        )
    return ProbeAnswer.model_validate_json(response.content)


async def _probe_pair(
    ctx: ApiContext, http: httpx.AsyncClient, source: Node, target: Node
) -> Probe:
    address = api_address(target)
    base = {"source": source.name, "target": target.name, "address": address}
    if source.name == ctx.node:  # this agent: connect itself
        reachable, latency, error = await tcp_probe(address)
        return Probe(
            **base, reachable=reachable, latency_ms=latency if reachable else None, error=error
        )
    try:
        answer = await _ask(http, ctx.peers.scheme, source, address)
    except (httpx.HTTPError, ValueError) as e:
        return Probe(**base, reachable=False, asked=False, error=_why(e))
    return Probe(
        **base,
        reachable=bool(answer.reachable),
        latency_ms=answer.latency_ms,
        error=answer.error,
    )


async def _clock(http: httpx.AsyncClient, scheme: str, node: Node) -> ClockOffset:
    best: ClockOffset | None = None
    for _ in range(CLOCK_SAMPLES):
        sent = time.time()
        try:
            answer = await _ask(http, scheme, node, None)
        except (httpx.HTTPError, ValueError) as e:
            return best or ClockOffset(node=node.name, error=_why(e))
        received = time.time()
        half = max(0.0, (received - sent) / 2)
        offset = answer.time - (sent + half)
        sample = ClockOffset(node=node.name, offset_s=offset, uncertainty_s=half)
        if best is None or sample.uncertainty_s < best.uncertainty_s:
            best = sample
    assert best is not None
    return best


async def etcd_facts(store: Store) -> EtcdFacts:
    try:
        health = await asyncio.wait_for(store.health(), HEALTH_TIMEOUT_S)
    except TimeoutError:
        return EtcdFacts(error=f"no answer in {HEALTH_TIMEOUT_S:.0f} s")
    except StoreError as e:
        return EtcdFacts(error=str(e))
    return EtcdFacts(
        members=tuple(
            EtcdMemberFacts(
                name=m.name,
                reachable=m.reachable,
                is_leader=m.is_leader,
                latency_ms=m.latency_ms,
                db_size=m.db_size,
                error=m.error,
            )
            for m in health.members
        ),
        leader=health.leader,
        has_quorum=has_quorum(health),
    )


@router.get("/cluster/validate", response_model=ValidationReport)
async def validate_cluster(ctx: Ctx) -> ValidationReport:
    """Check the cluster as a failover cluster's validation does, by category; each check
    passes, warns or fails, with what to do."""
    started = time.monotonic()
    keys = ctx.keys
    snap = await read_snapshot(ctx.store, keys, ("nodes", "alive", "volumes", "switches", "status"))
    nodes = await snap.decoded(Node, "nodes", ctx.corrupt)
    volumes = await snap.decoded(Volume, "volumes", ctx.corrupt)
    switches = await snap.decoded(Switch, "switches", ctx.corrupt)
    alive = frozenset(keys.name_of(kv.key, "alive") for kv in snap.by_kind["alive"])
    statuses = await snap.decoded(VMStatus, "status", ctx.corrupt)
    guest_cpus: dict[str, dict[str, str]] = {}  # node -> {vm: its CPU model}, running there
    for status in statuses.values():
        if status.node and status.state in RUNS:
            guest_cpus.setdefault(status.node, {})[status.vm] = status.cpu_model
    all_nodes = nodes.values()
    live = sorted((n for n in all_nodes if n.name in alive), key=lambda n: n.name)
    # At most MAX_ASKS requests in flight; the others wait for the pool, not for a timeout.
    timeout = httpx.Timeout(ASK_TIMEOUT_S, pool=None)
    limits = httpx.Limits(max_connections=MAX_ASKS)
    pairs = [(s, t) for s in live for t in live if s.name != t.name]
    # Other agents are asked with the caller's own token (see api/auth.py).
    headers = ctx.forwarded_headers()
    async with ctx.peers.client(timeout=timeout, limits=limits, headers=headers) as http:
        probes, ports, clocks, etcd = await asyncio.gather(
            asyncio.gather(*(_probe_pair(ctx, http, s, t) for s, t in pairs)),
            asyncio.gather(*(_probe_migration_pair(ctx, http, s, t) for s, t in pairs)),
            asyncio.gather(
                *(_clock(http, ctx.peers.scheme, n) for n in live if n.name != ctx.node)
            ),
            etcd_facts(ctx.store),
        )
    facts = ValidationFacts(
        cluster=keys.cluster,
        served_by=ctx.node,
        time=time.time(),
        nodes=tuple(all_nodes),
        alive=alive,
        volumes=tuple(v for v in volumes.values()),
        switches=tuple(s for s in switches.values()),
        probes=(*probes, *ports),
        clocks=tuple(clocks),
        etcd=etcd,
        guest_cpus=guest_cpus,
    )
    return validate(facts, duration_ms=(time.monotonic() - started) * 1000)
