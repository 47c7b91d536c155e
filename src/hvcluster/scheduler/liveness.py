"""Is a node alive, gone but maybe still running its VMs, or dead and safe to reclaim?

A node is *gone* when its ``alive`` key is absent. Its VMs may still be running (the node may
be cut off from etcd, or frozen), so they are reclaimed only once the node must have fenced
itself: ``fence_after`` plus a margin after the controller saw the key go, or at once when an
external fence agent confirmed the power-off (docs/architecture.md, "Safety", rule 3).

When more than ``mass_failure_fraction`` of the nodes vanish together, it is far more likely
that the control plane (etcd, the network to it) failed than that the hosts did: those nodes
get ``mass_failure_grace_s`` more to re-register before anything of theirs is reclaimed
(rule 5). Nodes "vanish together" when each went within the last ``fence_after + margin +
grace`` seconds; the share is counted among the nodes alive or gone that recently (a node
long dead is out of the picture).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from hvcluster.models.config import ClusterConfig
from hvcluster.scheduler.snapshot import ClusterSnapshot, NodeView
from hvcluster.scheduler.timefmt import clock, span


class Liveness(StrEnum):
    ALIVE = "alive"  # its alive key is present
    SUSPECT = "suspect"  # gone, but may still run its VMs: wait
    DEAD = "dead"  # gone and fenced (by itself, by time, or by a fence agent): reclaim


@dataclass(frozen=True)
class NodeHealth:
    """``reclaim_at``: when a gone node's VMs may be reclaimed (``None`` while alive).
    ``why``: a sentence saying how the node's state was decided, for reasons."""

    name: str
    liveness: Liveness
    gone_since: float | None
    reclaim_at: float | None
    why: str


@dataclass(frozen=True)
class MassFailure:
    """The nodes that vanished together, and out of how many."""

    vanished: tuple[str, ...]
    population: int

    def describe(self, fraction: float) -> str:
        return (
            f"{', '.join(self.vanished)} ({len(self.vanished)} of {self.population} nodes) "
            f"vanished together, more than {fraction:.0%}: treated as a control-plane event, "
            "not node failures"
        )


# etcd reports a lease's remaining TTL in whole seconds, rounded down: a lease the controller
# took for run out (controller/memory.py) went at least TTL - this without a keepalive.
TTL_ROUNDING_S = 1.0


def node_timings(cfg: ClusterConfig, node: NodeView | None = None) -> tuple[float, float]:
    """The ``(fence_after, lease TTL)`` to wait on for ``node``: the longer fence_after and
    the shorter TTL of the cluster config's and of those the node's agent published (it
    reads the config only when it starts, and keeps an adopted lease's TTL). After an admin
    changed the timings, a node whose agent has not restarted yet still fences on its old
    ones: waiting on the config's alone could reclaim its VMs before its watchdog fired."""
    fence_after, ttl = cfg.fence_after_s, cfg.lease_ttl_s
    if node is not None:
        fence_after = max(fence_after, node.node.fence_after_s)
        if node.node.lease_ttl_s > 0:
            ttl = min(ttl, node.node.lease_ttl_s)
    return fence_after, ttl


def expired_wait(cfg: ClusterConfig, node: NodeView | None = None) -> float:
    """How long after a node's lease ran out its VMs may be reclaimed. The node went at
    least ``TTL - 1 s`` without a confirmed keepalive, so its watchdog fired
    ``fence_after - (TTL - 1 s)`` after the key went at the latest (nothing, with the
    default timings): that, plus ``expired_margin`` for the kill to land. With the fast
    profile (TTL 2 s, fence_after 1.5 s) it is 0.5 s more than the margin. The timings are
    the node's own where they need longer (:func:`node_timings`)."""
    fence_after, ttl = node_timings(cfg, node)
    late = max(0.0, fence_after - (ttl - TTL_ROUNDING_S))
    return late + cfg.expired_margin_s


def _gone_since(node: NodeView, now: float) -> float:
    return now if node.gone_since is None else min(node.gone_since, now)


def mass_failure(snapshot: ClusterSnapshot) -> MassFailure | None:
    """The nodes that vanished together, if more than the configured fraction did."""
    cfg, now = snapshot.config, snapshot.now
    window = cfg.fence_after_s + cfg.recovery_margin_s + cfg.mass_failure_grace_s
    recent = [
        n for n in snapshot.nodes.values() if not n.alive and _gone_since(n, now) >= now - window
    ]
    population = sum(1 for n in snapshot.nodes.values() if n.alive) + len(recent)
    vanished = tuple(n.name for n in recent if not n.fenced)
    if vanished and len(vanished) > cfg.mass_failure_fraction * population:
        return MassFailure(vanished, population)
    return None


def assess(snapshot: ClusterSnapshot) -> Mapping[str, NodeHealth]:
    """The liveness of every node of the snapshot, keyed by name."""
    cfg, now = snapshot.config, snapshot.now
    mass = mass_failure(snapshot)
    in_mass = frozenset(mass.vanished) if mass else frozenset()
    result: dict[str, NodeHealth] = {}
    for node in snapshot.nodes.values():
        name = node.name
        if node.alive:
            result[name] = NodeHealth(name, Liveness.ALIVE, None, None, f"{name} is alive")
            continue
        since = _gone_since(node, now)
        gone = f"{name}'s alive key has been gone since {clock(since)}"
        if node.fenced:
            why = f"{gone} and a fence agent confirmed it is powered off"
            result[name] = NodeHealth(name, Liveness.DEAD, since, min(since, now), why)
            continue
        fence_after, _ = node_timings(cfg, node)
        wait = fence_after + cfg.recovery_margin_s
        text = f"fence_after {span(fence_after)} + margin {span(cfg.recovery_margin_s)}"
        if fence_after > cfg.fence_after_s:
            text += " (the node's own fence_after: its agent has not restarted since it changed)"
        if node.expired:
            wait = expired_wait(cfg, node)
            text = (
                f"its lease ran out (a whole TTL without a keepalive, so its watchdog fired "
                f"by then) + margin {span(wait)}"
            )
        if name in in_mass and mass is not None:
            wait += cfg.mass_failure_grace_s
            text += f" + mass-failure grace {span(cfg.mass_failure_grace_s)}"
            text = f"{text}, because {mass.describe(cfg.mass_failure_fraction)}"
        reclaim_at = since + wait
        if now >= reclaim_at:
            why = f"{gone} and {text} passed at {clock(reclaim_at)}"
            result[name] = NodeHealth(name, Liveness.DEAD, since, reclaim_at, why)
        else:
            why = (
                f"{gone}; it may still run its VMs until {clock(reclaim_at)} ({text}), "
                "unless it returns or a fence agent confirms it off"
            )
            result[name] = NodeHealth(name, Liveness.SUSPECT, since, reclaim_at, why)
    return result
