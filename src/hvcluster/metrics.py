"""One agent process's own measurements, in a Prometheus registry of its own.

The agent's API serves them at ``/metrics`` (:mod:`hvcluster.api.metrics`), after the
cluster-wide facts it reads from the store at scrape time. What is here is only what this
process measured itself and nobody else can know: how long its etcd requests took, its lease
renewals, its controller cycles while it leads, how long ago it fed its watchdog, and the
failovers, fences, restarts and migrations it carried out. The store, the agent and the
controller record into an :class:`AgentMetrics` handed to them; this module imports nothing
else of ours, so any layer may.

A registry per agent, never prometheus_client's global one: a simulation runs several agents
in one process, each with its own numbers.

Counters are per process: they start at 0 when the agent starts (Prometheus' ``rate`` and
``increase`` handle the reset) and only the process that did a thing counts it (failovers
only on the agent that led the controller then). The cluster's total is the sum over every
agent (``sum(increase(hvc_vm_failovers_total[1h]))``). docs/architecture.md, "Metrics", lists
every metric.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from functools import partial

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric

# No ``*_created`` series beside every counter and histogram: Prometheus' text format has no
# use for them, and they double the answer. (prometheus_client's switch: process-wide, untyped.)
disable_created_metrics()  # type: ignore[no-untyped-call]

# Seconds. A request to etcd, a keepalive: a millisecond on a quiet LAN, seconds when a
# member is frozen (the store's deadline is 5 s; a keepalive's 0.9 of the interval).
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CYCLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MIGRATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
DOWNTIME_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

PER_PROCESS = "Per process: counted by this agent only, from 0 when it starts; sum over agents."


class AgentMetrics:
    """What one agent process measures. ``node``: the agent's node name (``hvc_agent_info``
    says it, to join a scrape target to a node); ``clock``: monotonic seconds, the one the
    agent's liveness feeds its watchdog by (a simulation's manual clock);
    ``migration_kinds``: their series exist from the start, at 0 (a series that appears at
    its first count hides that count from ``increase``)."""

    def __init__(
        self,
        node: str = "",
        clock: Callable[[], float] = time.monotonic,
        migration_kinds: Iterable[str] = (),
    ) -> None:
        self.registry = CollectorRegistry()
        self.clock = clock
        reg = self.registry
        ProcessCollector(registry=reg)  # process_*: its CPU time, memory, open files
        # every metric in this agent's registry
        gauge, counter = partial(Gauge, registry=reg), partial(Counter, registry=reg)
        histogram = partial(Histogram, registry=reg)
        info = gauge("hvc_agent_info", "This agent: 1, labelled with its node.", ["node"])
        info.labels(node=node).set(1)
        self.etcd_request_seconds = histogram(
            "hvc_etcd_request_seconds",
            "Time of this agent's requests to etcd (liveness's own client included), by "
            "operation and outcome (ok, error), fail-over to another member included; "
            "watch streams and member status probes aside.",
            ["op", "outcome"],
            buckets=REQUEST_BUCKETS,
        )
        self.lease_renew_seconds = histogram(
            "hvc_lease_renew_seconds",
            "Time from sending a keepalive of this node's lease to its confirmation.",
            buckets=REQUEST_BUCKETS,
        )
        self.lease_renew_failures = counter(
            "hvc_lease_renew_failures",
            "Keepalives of this node's lease that were not confirmed (no answer in time, "
            "or the lease was gone). " + PER_PROCESS,
        )
        self.controller_cycle_seconds = histogram(
            "hvc_controller_cycle_seconds",
            "Time of a controller cycle (read, decide, apply) on this agent while it leads.",
            buckets=CYCLE_BUCKETS,
        )
        self.controller_leader = gauge(
            "hvc_controller_leader",
            "1 while this agent's controller leads (as of its last cycle), else 0.",
        )
        self.failovers = counter(
            "hvc_vm_failovers",
            "VMs this agent's controller moved to another node by a failover, by the node "
            "they left and the cause (node_dead: its lease ran out or a fence agent confirmed "
            "it off; vm_failed: the VM's local restarts ran out). Only the leader counts. "
            + PER_PROCESS,
            ["from_node", "cause"],
        )
        self.fence_agent_runs = counter(
            "hvc_fence_agent_runs",
            "Runs of the cluster's fence_command by this agent's controller, by result "
            "(confirmed: it exited 0; failed). " + PER_PROCESS,
            ["result"],
        )
        self.watchdog_fences = counter(
            "hvc_watchdog_fences",
            "Times this node's watchdog deadline passed while this agent ran: its watchdog "
            "killed every VM of the node (self-fencing, safety rule 2). An agent frozen past "
            "it counts it when it runs again; one killed does not. " + PER_PROCESS,
        )
        self.restarts = counter(
            "hvc_vm_restarts",
            "VMs this agent restarted on its own node after they stopped unasked (local "
            "restarts, before any failover). " + PER_PROCESS,
        )
        self.migration_seconds = histogram(
            "hvc_migration_duration_seconds",
            "Total time of a finished migration, request to running on the target, by "
            "kind; observed once per migration cluster-wide, by the agent that completed "
            "its record (source, target or controller). " + PER_PROCESS,
            ["kind"],
            buckets=MIGRATION_BUCKETS,
        )
        self.migration_downtime_seconds = histogram(
            "hvc_migration_downtime_seconds",
            "Downtime of a finished migration as the guest saw it (paused on the source "
            "until running on the target), by kind; as hvc_migration_duration_seconds, and "
            "only when both halves were measured. " + PER_PROCESS,
            ["kind"],
            buckets=DOWNTIME_BUCKETS,
        )
        self.watchdog = WatchdogAge(clock)
        reg.register(self.watchdog)
        for result in ("confirmed", "failed"):
            self.fence_agent_runs.labels(result=result)
        for kind in migration_kinds:
            self.migration_seconds.labels(kind=kind)
            self.migration_downtime_seconds.labels(kind=kind)

    # --- recording (each a line at the call site) -----------------------------------
    def etcd_request(self, op: str, ok: bool, seconds: float) -> None:
        self.etcd_request_seconds.labels(op=op, outcome="ok" if ok else "error").observe(seconds)

    def migration_done(self, kind: str, total_ms: float | None, downtime_ms: float | None) -> None:
        """A migration's record was completed by this process (its ``migration.done``)."""
        if total_ms is not None:
            self.migration_seconds.labels(kind=kind).observe(total_ms / 1000)
        if downtime_ms is not None:
            self.migration_downtime_seconds.labels(kind=kind).observe(downtime_ms / 1000)


class WatchdogAge:
    """How long ago the agent fed its watchdog, and how long its deadline has left, read at
    scrape time from the last feed: nothing until the first feed."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.fed_at: float | None = None  # monotonic, set from the liveness thread
        self.deadline = 0.0

    def fed(self, deadline: float) -> None:
        self.fed_at, self.deadline = self.clock(), deadline

    def collect(self) -> Iterable[Metric]:
        if self.fed_at is None:
            return []
        now = self.clock()
        age = GaugeMetricFamily(
            "hvc_watchdog_feed_age_seconds",
            "Seconds since this agent last fed its watchdog (a confirmed keepalive, or "
            "evidence that nobody can act, every keepalive interval).",
            value=max(0.0, now - self.fed_at),
        )
        left = GaugeMetricFamily(
            "hvc_watchdog_deadline_seconds",
            "Seconds left before this node's watchdog kills its VMs, as last fed; negative: "
            "it has fired.",
            value=self.deadline - now,
        )
        return [age, left]
