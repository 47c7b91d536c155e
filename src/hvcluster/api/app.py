"""The REST API an agent serves: ``create_app(store, keys, node)``.

It writes intent only (a VM's spec and desired state, a node's admin state) and reads state;
the controller and the agents act on what it writes. Routes live under ``/api/v1``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from fastapi import APIRouter, Depends, FastAPI

from hvcluster import __version__
from hvcluster.api import (
    balancing,
    checkpoints,
    cluster_config,
    consoles,
    events,
    eviction,
    joining,
    metrics,
    migrations,
    nodes,
    storage_moves,
    switches,
    tokens,
    validation,
    vm_edit,
    vms,
    volumes,
)
from hvcluster.api.auth import Authorizer
from hvcluster.api.context import ApiContext, Ctx, PeerApi
from hvcluster.api.errors import install_error_handlers
from hvcluster.api.limits import RequestLimits
from hvcluster.api.reads import decode_optional, skipped_of
from hvcluster.api.views import ClusterView, Counts, Health, Skipped
from hvcluster.metrics import AgentMetrics
from hvcluster.models.config import ClusterConfig
from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.models.node import Node
from hvcluster.models.vm import Placement, VMSpec, VMStatus
from hvcluster.store.base import Store
from hvcluster.store.cache import WatchedCache
from hvcluster.store.keys import Keys
from hvcluster.store.reads import read_snapshot

PREFIX = "/api/v1"

cluster_router = APIRouter(tags=["cluster"])


@cluster_router.get("/healthz", response_model=Health)
async def healthz(ctx: Ctx) -> Health:
    """200 when this API reaches the store; 503 (from the error handler) when not. Open to
    anyone, without a token (see api/auth.py)."""
    return Health(ok=True, node=ctx.node, revision=await ctx.store.revision())


@cluster_router.get("/cluster", response_model=ClusterView)
async def cluster(ctx: Ctx) -> ClusterView:
    keys = ctx.keys
    kinds = ("nodes", "alive", "vms", "placements", "status")
    snap = await read_snapshot(ctx.store, keys, kinds, single=(keys.config,))
    skipped: list[Skipped] = []
    config_kv = snap.single[keys.config]
    config = await decode_optional(ClusterConfig, config_kv, ctx.corrupt, skipped)
    nodes = await snap.decoded(Node, "nodes", ctx.corrupt)
    specs = await snap.decoded(VMSpec, "vms", ctx.corrupt)
    placements = await snap.decoded(Placement, "placements", ctx.corrupt)
    statuses = await snap.decoded(VMStatus, "status", ctx.corrupt)
    alive = {keys.name_of(kv.key, "alive") for kv in snap.by_kind["alive"]}
    by_state = Counter(
        vms.state_of(
            spec,
            placements.get(name),
            statuses.get(name),
        ).value
        for name, spec in specs.by_name().items()
    )
    counts = Counts(
        nodes=len(nodes.items),
        nodes_alive=len(alive & set(nodes.items)),
        nodes_up=sum(1 for n in nodes.values() if n.admin_state is NodeAdminState.UP),
        vms=len(specs.items),
        vms_desired_running=sum(1 for s in specs.values() if s.desired_state == "running"),
        vms_placed=sum(1 for name in specs.items if name in placements.items),
        vms_by_state=dict(by_state),
    )
    for d in (nodes, specs, placements, statuses):
        skipped.extend(skipped_of(d))
    return ClusterView(
        cluster=keys.cluster,
        served_by=ctx.node,
        config=config or ClusterConfig(name=keys.cluster),
        config_stored=config is not None,
        counts=counts,
        skipped=skipped,
        revision=snap.revision,
    )


def create_app(
    store: Store,
    keys: Keys,
    node: str,
    peers: PeerApi | None = None,
    agent_metrics: AgentMetrics | None = None,
    local_console: consoles.LocalConsole | None = None,
    now: Callable[[], float] = time.time,
    cache: WatchedCache | None = None,
) -> FastAPI:
    """The API of the agent ``node`` over ``store``. The caller owns the store (and closes it).
    ``peers``: how to reach other agents' APIs (default: plain http); ``agent_metrics``: what
    the agent measures of itself, served at ``/metrics`` (default: a registry of its own);
    ``local_console``: where this node's VMs' consoles are (the agent's driver; None: this API
    bridges none itself); ``now``: the cluster's wall clock (a simulation's virtual one);
    ``cache``: the agent's watched cache (``agent/node.cycle_prefixes``), read instead of the
    store for the whole cluster on a request's path."""
    app = FastAPI(
        title="hvcluster",
        version=__version__,
        description="A failover cluster for QEMU/KVM virtual machines.",
        # Every route, whichever router it comes from: the token and its role (api/auth.py).
        dependencies=[Depends(Authorizer(store, keys, PREFIX))],
    )
    app.state.ctx = ApiContext(
        store=store,
        keys=keys,
        node=node,
        peers=peers or PeerApi(),
        metrics=agent_metrics or AgentMetrics(node),
        now=now,
        cache=cache,
    )
    app.state.consoles = consoles.Consoles(local_console)
    install_error_handlers(app)
    app.add_middleware(RequestLimits)  # bodies bounded in size and time before any route
    routers = (cluster_router, vms.router, nodes.router, events.router, migrations.router)
    for router in (*routers, volumes.router, switches.router, storage_moves.router):
        app.include_router(router, prefix=PREFIX)
    app.include_router(validation.router, prefix=PREFIX)
    app.include_router(tokens.router, prefix=PREFIX)
    app.include_router(metrics.router)  # /metrics, where Prometheus looks (reader role)
    app.include_router(cluster_config.router, prefix=PREFIX)
    app.include_router(balancing.router, prefix=PREFIX)
    app.include_router(consoles.router, prefix=PREFIX)
    app.include_router(vm_edit.router, prefix=PREFIX)
    app.include_router(joining.router, prefix=PREFIX)
    app.include_router(eviction.router, prefix=PREFIX)
    app.include_router(checkpoints.router, prefix=PREFIX)
    return app
