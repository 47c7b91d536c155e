"""``GET /metrics``: Prometheus' text format, the cluster's facts and this agent's own numbers.

Two kinds of metric, told apart in each HELP text (docs/architecture.md, "Metrics", lists
them all):

* **Cluster-wide facts** (nodes up, capacity and what is allocated, VMs by state and node,
  jobs under way): every agent answers the same, computed at scrape time from one snapshot
  read through :func:`~hvcluster.store.reads.read_snapshot` (one revision, given as
  ``hvc_store_revision``), never kept in counters that could drift from etcd. Scraping every
  agent gives them once per agent: aggregate with ``max by (node, state)`` (or scrape one).
* **This agent's own measurements** (:class:`hvcluster.metrics.AgentMetrics`: etcd and
  lease latencies, controller cycles, watchdog feeding, failovers, fences, restarts and
  migrations it carried out).

When the snapshot cannot be read (etcd slow or cut off), the agent's own numbers are still
served, with ``hvc_store_read_ok 0``. The route needs the reader role, as every read does
(``api/auth.py``): Prometheus sends a bearer token (``authorization: {credentials_file: ...}``
in its scrape config).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from hvcluster.api import vms
from hvcluster.api.context import ApiContext, Ctx
from hvcluster.api.views import VMView
from hvcluster.models.errors import StoreError
from hvcluster.models.lifecycle import NodeAdminState, VMState
from hvcluster.models.node import Node
from hvcluster.models.vm import Placement, VMSpec, VMStatus
from hvcluster.store.reads import Decoded, Snapshot, read_snapshot

log = logging.getLogger(__name__)

router = APIRouter(tags=["cluster"])

# Text format 0.0.4: every Prometheus reads it, and our names need nothing newer.
TEXT = CONTENT_TYPE_PLAIN_0_0_4
READ_TIMEOUT_S = 3.0  # under Prometheus' default scrape timeout (10 s)
MIB = 1 << 20
FACT = "Cluster-wide fact, read from the store at scrape time: every agent answers the same."
KINDS = ("nodes", "alive", "vms", "placements", "status", "jobs")


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {TEXT: {}}, "description": "Prometheus text format"}},
)
async def metrics(ctx: Ctx) -> Response:
    """Every metric of this agent in Prometheus' text format (reader role)."""
    facts: list[Metric]
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            snap = await read_snapshot(ctx.store, ctx.keys, KINDS)
            facts = await cluster_facts(ctx, snap)
        ok = 1.0
    except (StoreError, TimeoutError) as e:
        log.warning("metrics: no cluster facts, the store did not answer: %s", e)
        facts, ok = [], 0.0
    read_ok = GaugeMetricFamily(
        "hvc_store_read_ok",
        "1 if this scrape read the cluster's facts from the store, 0 if the store did not "
        f"answer within {READ_TIMEOUT_S:g} s (this agent's own metrics are served either way).",
        value=ok,
    )
    body = generate_latest(ctx.metrics.registry) + generate_latest(_Fixed([read_ok, *facts]))
    return Response(body, media_type=TEXT)


class _Fixed(CollectorRegistry):
    """A registry of metric families already computed (the snapshot was read with await;
    prometheus_client collects synchronously)."""

    def __init__(self, families: list[Metric]) -> None:
        super().__init__()
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


async def cluster_facts(ctx: ApiContext, snap: Snapshot) -> list[Metric]:
    """The cluster-wide facts of ``snap`` (corrupt values skipped, counted by kind)."""
    nodes: Decoded[Node] = await snap.decoded(Node, "nodes", ctx.corrupt)
    specs: Decoded[VMSpec] = await snap.decoded(VMSpec, "vms", ctx.corrupt)
    placements: Decoded[Placement] = await snap.decoded(Placement, "placements", ctx.corrupt)
    statuses: Decoded[VMStatus] = await snap.decoded(VMStatus, "status", ctx.corrupt)
    # A key under alive/ that does not decode still proves the lease is held.
    alive = snap.names("alive")
    shown = [
        vms.view(spec, placements.get(name), statuses.get(name))
        for name, spec in specs.by_name().items()
    ]
    out = node_facts(nodes, alive, shown)
    by = Counter((v.node, v.state.value) for v in shown)
    vm_count = GaugeMetricFamily(
        "hvc_vms",
        "VMs by the node they are placed on ('' when unplaced) and their state, as GET "
        "/api/v1/vms shows them. " + FACT,
        labels=["node", "state"],
    )
    for node in sorted({"", *nodes.items, *(v.node for v in shown)}):
        for state in VMState:
            vm_count.add_metric([node, state.value], by[(node, state.value)])
    jobs = GaugeMetricFamily(
        "hvc_jobs",
        "Migrations and storage moves under way (one jobs/<vm> key each). " + FACT,
        value=len(snap.by_kind["jobs"]),
    )
    unreadable = GaugeMetricFamily(
        "hvc_store_unreadable_values",
        "Values in the store that do not decode, skipped, by kind. " + FACT,
        labels=["kind"],
    )
    decoded: dict[str, Decoded[Any]] = {
        "nodes": nodes, "vms": specs, "placements": placements, "status": statuses
    }  # fmt: skip
    for kind, found in decoded.items():
        unreadable.add_metric([kind], len(found.unreadable))
    revision = GaugeMetricFamily(
        "hvc_store_revision", "The store revision the cluster facts were read at.",
        value=snap.revision,
    )  # fmt: skip
    return [*out, vm_count, jobs, unreadable, revision]


def node_facts(nodes: Decoded[Node], alive: set[str], shown: list[VMView]) -> list[Metric]:
    """Per node: up, admin state, watchdog, capacity, and what the VMs placed there take."""

    def family(name: str, what: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, f"{what} {FACT}", labels=["node"])

    up = family("hvc_node_up", "1 while the node's lease lives (its alive key is present), else 0.")
    admin = GaugeMetricFamily(
        "hvc_node_admin_state",
        "1 for the node's admin state (up, paused, draining, quarantined), 0 for the "
        f"others. {FACT}",
        labels=["node", "state"],
    )
    watchdog = family(
        "hvc_node_watchdog_acknowledging",
        "1 while the node's watchdog acknowledges feeding, as its agent last reported; 0 "
        "when it does not (the node starts no VM); absent before the first report.",
    )
    cpus = family("hvc_node_cpus", "vCPUs the node offers to VMs (its capacity).")
    memory = family("hvc_node_memory_bytes", "Memory the node offers to VMs (its capacity).")
    cpus_used = family(
        "hvc_node_cpus_allocated", "vCPUs of the VMs placed on the node (what the scheduler "
        "counts against its capacity, migrations in flight aside)."
    )  # fmt: skip
    memory_used = family(
        "hvc_node_memory_allocated_bytes", "Memory of the VMs placed on the node (as "
        "hvc_node_cpus_allocated)."
    )  # fmt: skip
    used_cpus: Counter[str] = Counter()
    used_memory: Counter[str] = Counter()
    for v in shown:
        if v.node:
            used_cpus[v.node] += v.spec.vcpus
            used_memory[v.node] += v.spec.memory_mib
    for name, node in sorted(nodes.by_name().items()):
        up.add_metric([name], 1.0 if name in alive else 0.0)
        for state in NodeAdminState:
            admin.add_metric([name, state.value], 1.0 if node.admin_state is state else 0.0)
        if node.watchdog is not None:
            watchdog.add_metric([name], 1.0 if node.watchdog.acknowledging else 0.0)
        cpus.add_metric([name], node.capacity.cpus)
        memory.add_metric([name], node.capacity.memory_mib * MIB)
        cpus_used.add_metric([name], used_cpus[name])
        memory_used.add_metric([name], used_memory[name] * MIB)
    return [up, admin, watchdog, cpus, memory, cpus_used, memory_used]
