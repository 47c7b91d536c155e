"""What the overview page shows, gathered from the API's own read functions (so the page and
``hvc``/``GET /api/v1/...`` never disagree): nodes with their use and their VMs, the
controller, etcd, and whether the running HA VMs would survive the loss of any one node."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from hvcluster.api import migrations, nodes, vms
from hvcluster.api.context import ApiContext
from hvcluster.api.validation import etcd_facts
from hvcluster.api.views import NodeView, VMView
from hvcluster.models.lifecycle import MigrationState, NodeAdminState, VMState
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.models.validation import EtcdFacts
from hvcluster.models.vm import Priority
from hvcluster.store.election import current_leader


@dataclass
class NodeCard:
    view: NodeView
    vms: list[VMView] = field(default_factory=list)
    cpus_used: int = 0
    memory_used_mib: int = 0
    drain: DrainProgress | None = None

    @property
    def cpu_pct(self) -> int:
        return _pct(self.cpus_used, self.view.node.capacity.cpus)

    @property
    def memory_pct(self) -> int:
        return _pct(self.memory_used_mib, self.view.node.capacity.memory_mib)

    @property
    def cpu_use_pct(self) -> int | None:
        """The host's measured CPU use in percent (what the balancer reads); None while
        not measured or when the node is not alive (its last figure is stale)."""
        cores = self.view.cpu_used_cores
        if cores is None or not self.view.alive:
            return None
        return _pct(cores, self.view.node.capacity.cpus)


@dataclass(frozen=True)
class DrainProgress:
    """A draining node: VMs moved off by this drain, and those still on it."""

    moved: int
    left: int
    moving: int

    @property
    def pct(self) -> int:
        return _pct(self.moved, self.moved + self.left)


@dataclass(frozen=True)
class Capacity:
    """Can the running HA VMs survive one node's loss (each node in turn)?"""

    ok: bool
    text: str
    short: dict[str, list[str]]  # node -> VMs that would find no room if it failed


@dataclass
class Overview:
    cards: list[NodeCard]
    unplaced: list[VMView]
    controller: str | None
    etcd: EtcdFacts
    capacity: Capacity
    migrations: list[Migration]
    revision: int


def _pct(used: float, total: float) -> int:
    return 0 if total <= 0 else min(100, round(100 * used / total))


def drain_progress(node: NodeView, on_it: list[VMView], moves: list[Migration]) -> DrainProgress:
    """Progress of the drain under way on ``node``: its ``drain:`` migrations since it began
    (done, or under way) against the VMs still placed on it."""
    mine = [
        m
        for m in moves
        if m.requested_by == f"drain:{node.name}" and m.created >= node.node.admin_since - 1
    ]
    done = sum(1 for m in mine if m.state is MigrationState.DONE)
    return DrainProgress(moved=done, left=len(on_it), moving=sum(1 for m in mine if m.active))


async def overview(ctx: ApiContext) -> Overview:
    node_list = await nodes.list_nodes(ctx)
    vm_list = await vms.list_vms(ctx)
    moves = (await migrations.list_migrations(ctx)).migrations
    cards = {n.name: NodeCard(n) for n in node_list.nodes}
    unplaced = []
    for vm in vm_list.vms:
        card = cards.get(vm.node)
        if card is None:
            unplaced.append(vm)
            continue
        card.vms.append(vm)
        card.cpus_used += vm.spec.vcpus
        card.memory_used_mib += vm.spec.memory_mib
    for card in cards.values():
        if card.view.admin_state == NodeAdminState.DRAINING.value:
            card.drain = drain_progress(card.view, card.vms, moves)
    return Overview(
        cards=[cards[n] for n in sorted(cards)],
        unplaced=unplaced,
        controller=await current_leader(ctx.store, ctx.keys.election("controller")),
        etcd=await etcd_health(ctx),
        capacity=await failover_capacity(ctx),
        migrations=[m for m in moves if m.active],
        revision=vm_list.revision,
    )


ETCD_FACTS_S = 5.0  # etcd's member status asked at most this often, however many viewers
_etcd_cache: dict[int, tuple[float, EtcdFacts]] = {}


async def etcd_health(ctx: ApiContext) -> EtcdFacts:
    """:func:`hvcluster.api.validation.etcd_facts` (a status call to every member), shared
    by every page polling this agent within :data:`ETCD_FACTS_S`."""
    now = time.monotonic()
    cached = _etcd_cache.get(id(ctx.store))
    if cached is not None and now - cached[0] < ETCD_FACTS_S:
        return cached[1]
    facts = await etcd_facts(ctx.store)
    _etcd_cache.clear()  # one store per agent: no growth
    _etcd_cache[id(ctx.store)] = (now, facts)
    return facts


async def failover_capacity(ctx: ApiContext) -> Capacity:
    """For each node, in turn: would every HA VM running on it find room on the other open
    nodes (alive and up), by the API's one fitting rule (:meth:`migrations.Cluster.why_not`:
    capacity, owners, switches, volumes, anti-affinity), placed in recovery order (priority,
    then the largest first), each one counted on the node it lands on before the next?"""
    cluster = await migrations.Cluster(ctx).load()
    running = {
        name
        for name, status in cluster.statuses.items()
        if status.state is VMState.RUNNING and name in cluster.placements
    }
    short: dict[str, list[str]] = {}
    checked = 0
    for lost in sorted(cluster.nodes):
        victims = [
            cluster.specs[name]
            for name, p in cluster.placements.items()
            if p.node == lost
            and name in running
            and name in cluster.specs
            and cluster.specs[name].desired_state == "running"
            and cluster.specs[name].ha.priority is not Priority.NO_AUTO_START
        ]
        if not victims:
            continue
        checked += 1
        saved = dict(cluster.placements)
        others = sorted(n for n in cluster.nodes if n != lost)
        for spec in sorted(victims, key=lambda s: (s.ha.priority.rank, -s.memory_mib, s.name)):
            # source "": an unknown source skips the live-transfer checks (a failover restarts)
            target = next(
                (n for n in others if cluster.why_not(spec, n, "", MigrationKind.QUICK) is None),
                None,
            )
            if target is None:
                short.setdefault(lost, []).append(spec.name)
            else:
                cluster.placements[spec.name] = saved[spec.name].model_copy(update={"node": target})
        cluster.placements = saved
    if checked == 0:
        return Capacity(True, "no HA VM is running: nothing to fail over", {})
    if not short:
        return Capacity(True, "the running HA VMs survive the loss of any one node (N+1 holds)", {})
    said = "; ".join(
        f"if {n} fails: {', '.join(v)} {'finds' if len(v) == 1 else 'find'} no room"
        for n, v in sorted(short.items())
    )
    return Capacity(False, f"N+1 does not hold: {said}", short)
