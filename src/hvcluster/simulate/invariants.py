"""What must hold after every step of a simulation, checked from the hypervisors' truth (the
sim drivers) and the records, and each breach reported as a :class:`Violation`:

* ``two-copies``: no VM runs on two hosts at once.
* ``dead-start``: no VM starts on a node that is dead, cut off from etcd, hung, or whose
  watchdog deadline has passed (fenced).
* ``hard-rule``: a VM runs only on its possible owners; no two VMs of an enforced
  anti-affinity class share a node.
* ``capacity``: the VMs on a host never need more CPUs or memory than its node record has.
* ``recovery``: an HA VM meant to run that could run somewhere (a node alive, reachable, up,
  allowed, with room, etcd available) runs again within the recovery SLO.
* ``threshold``: no VM fails over more often than its ``failover_threshold`` in its period.
* ``quarantine``: a node declared dead ``quarantine.threshold`` times within
  ``quarantine.period_s`` (failures before its last quarantine or an admin's clearing aside)
  is quarantined within :data:`QUARANTINE_GRACE_S` of some node being able to lead (unless
  draining: that waits for the drain's end); no node is quarantined below the threshold;
  no quarantine ends before its time unless the administrator clears it.
* ``intent``: a VM the administrator stopped does not run (after its shutdown's grace); a
  node the administrator paused or drained stays so until resumed, and no VM is newly
  placed on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hvcluster.models.base import decode
from hvcluster.models.config import ClusterConfig, QuarantineSettings
from hvcluster.models.lifecycle import NodeAdminState, VMState
from hvcluster.models.node import Node
from hvcluster.models.vm import Placement, VMSpec, VMStatus
from hvcluster.simulate.cluster import SimCluster

STOP_GRACE_S = 15.0  # a stopped VM's clean shutdown, then the kill, fit in this
# A node due for quarantine is quarantined within this (the controller's next cycle, or a
# new leader's first when the old one died with it), while etcd is up.
QUARANTINE_GRACE_S = 10.0
UNSET = -1.0  # (failures_counted: the node's own quarantine)
ACTIVE = {VMState.RUNNING, VMState.PAUSED, VMState.STARTING, VMState.MIGRATING,
          VMState.STOPPING}  # fmt: skip


@dataclass(frozen=True)
class Violation:
    time: float  # virtual seconds from the start
    rule: str
    subject: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"time": round(self.time, 3), "rule": self.rule, "subject": self.subject,
                "detail": self.detail}  # fmt: skip

    def line(self) -> str:
        return f"+{self.time:9.3f}  VIOLATION {self.rule}  {self.subject}  {self.detail}"


@dataclass
class Checker:
    """Checks one simulated cluster; :meth:`check` after every step. ``intent`` is kept up
    to date by the runner (what the administrator asked for, and when)."""

    cluster: SimCluster
    recovery_slo_s: float
    start: float  # the clock's wall time at virtual 0
    violations: list[Violation] = field(default_factory=list)
    stopped_at: dict[str, float] = field(default_factory=dict)  # vm -> when the admin stopped it
    paused: set[str] = field(default_factory=set)  # nodes the admin paused or drained
    _runs: set[tuple[str, str, int]] = field(default_factory=set)  # (vm, node, epoch) seen running
    _down_since: dict[str, float] = field(default_factory=dict)
    _placements: dict[str, tuple[str, int]] = field(default_factory=dict)
    _reported: set[tuple[str, str]] = field(default_factory=set)
    _decoded: dict[str, tuple[int, Any]] = field(default_factory=dict)  # key -> (mod rev, value)
    _records: tuple[int, tuple[dict[str, Any], ...]] | None = None  # (revision, as read then)
    _config: ClusterConfig = field(default_factory=ClusterConfig)
    _nodes_before: dict[str, Node] = field(default_factory=dict)  # as the last check saw them
    _quarantine_due: dict[str, float] = field(default_factory=dict)  # node -> due since
    _thresholds_seen: list[tuple[float, int]] = field(default_factory=list)  # (t, threshold)

    def _report(self, t: float, rule: str, subject: str, detail: str, once: str = "") -> None:
        if once:
            if (rule, once) in self._reported:
                return
            self._reported.add((rule, once))
        self.violations.append(Violation(t, rule, subject, detail))

    async def check(self) -> None:
        c = self.cluster
        t = c.now() - self.start
        specs, placements, statuses, nodes = self._records_now()
        hosts: dict[str, list[tuple[str, VMState, int]]] = {}  # vm -> (node, state, epoch)
        load: dict[str, tuple[int, int]] = {}  # node -> (vcpus, memory)
        for name in sorted(c.drivers):
            if name not in c.tasks:
                continue
            for info in await c.drivers[name].list():
                hosts.setdefault(info.name, []).append((name, info.state, info.epoch))
                spec = specs.get(info.name)
                if spec is not None and info.state in ACTIVE:
                    cpus, mem = load.get(name, (0, 0))
                    load[name] = (cpus + spec.vcpus, mem + spec.memory_mib)
        self._two_copies(t, hosts)
        self._dead_start(t, hosts)
        self._hard_rules(t, hosts, specs)
        self._capacity(t, load, nodes)
        self._thresholds(t, specs, placements)
        self._intent(t, hosts, nodes, placements)
        self._recovery(t, hosts, specs, statuses, nodes, load)
        self._quarantine(t, nodes)

    def _records_now(self) -> tuple[dict[str, Any], ...]:
        """Specs, placements, statuses and nodes by name (none while etcd is down), read
        again only when the store's revision moved (most steps change nothing)."""
        store, keys = self.cluster.store, self.cluster.keys
        if not store.available:
            return {}, {}, {}, {}
        revision = store.revision_now
        if self._records is None or self._records[0] != revision:
            kinds = (("vms", VMSpec), ("placements", Placement), ("status", VMStatus),
                     ("nodes", Node))  # fmt: skip
            self._records = revision, tuple(self._read(keys.prefix(k), m) for k, m in kinds)
            found = [kv for kv in store.peek(keys.config)[1] if kv.key == keys.config]
            if found:
                self._config = decode(ClusterConfig, found[0].key, found[0].value)
        return self._records[1]

    def _read(self, prefix: str, cls: type[Any]) -> dict[str, Any]:
        """The records under ``prefix`` by name, decoded once per revision of each (the
        checks run every step: decoding everything each time would be most of a run).
        Read at once (:meth:`MemoryStore.peek`): a check looks, it takes no turn from the
        daemons."""
        out = {}
        for kv in self.cluster.store.peek(prefix)[1]:
            cached = self._decoded.get(kv.key)
            if cached is None or cached[0] != kv.mod_revision:
                cached = self._decoded[kv.key] = (kv.mod_revision, decode(cls, kv.key, kv.value))
            out[kv.key[len(prefix) :]] = cached[1]
        return out

    def _running(self, hosts: dict[str, list[tuple[str, VMState, int]]], vm: str) -> list[str]:
        return [n for n, s, _ in hosts.get(vm, []) if s is VMState.RUNNING]

    def _two_copies(self, t: float, hosts: dict[str, list[tuple[str, VMState, int]]]) -> None:
        for vm in sorted(hosts):
            running = self._running(hosts, vm)
            if len(running) > 1:
                self._report(t, "two-copies", f"vm/{vm}", f"runs on {', '.join(running)}",
                             once=f"{vm}:{','.join(running)}")  # fmt: skip

    def _unfit(self, node: str) -> str:
        """Why ``node`` may not start a VM now ("" if it may)."""
        c = self.cluster
        if node not in c.tasks:
            return "dead"
        view = c.views[node]
        if view.cut:
            return "cut off from etcd"
        if view.hung:
            return "hung"
        if c.watchdog_overdue(node):
            return "fenced (watchdog deadline passed)"
        return ""

    def _dead_start(self, t: float, hosts: dict[str, list[tuple[str, VMState, int]]]) -> None:
        for vm in sorted(hosts):
            for node, state, epoch in hosts[vm]:
                run = (vm, node, epoch)
                if state is not VMState.RUNNING or run in self._runs:
                    continue
                self._runs.add(run)
                why = self._unfit(node)
                if why:
                    self._report(t, "dead-start", f"vm/{vm}",
                                 f"started on {node} (epoch {epoch}), which is {why}")  # fmt: skip

    def _hard_rules(self, t: float, hosts: dict[str, list[tuple[str, VMState, int]]],
                    specs: dict[str, VMSpec]) -> None:  # fmt: skip
        classes: dict[tuple[str, str], list[str]] = {}
        for vm in sorted(hosts):
            spec = specs.get(vm)
            if spec is None:
                continue
            for node in self._running(hosts, vm):
                owners = spec.ha.possible_owners
                if owners and node not in owners:
                    self._report(t, "hard-rule", f"vm/{vm}",
                                 f"runs on {node}, not one of its possible owners",
                                 once=f"owners:{vm}:{node}")  # fmt: skip
                for cls in spec.ha.anti_affinity_classes:
                    classes.setdefault((node, cls), []).append(vm)
        # A class shared on one node is a breach when any VM of it there enforces it: the
        # rule binds both of a pair when either enforces (docs/architecture.md, fitting).
        for (node, cls), vms in sorted(classes.items()):
            enforcing = [vm for vm in vms if specs[vm].ha.anti_affinity_enforced]
            if len(vms) > 1 and enforcing:
                self._report(t, "hard-rule", f"node/{node}",
                             f"anti-affinity class {cls!r}, enforced by "
                             f"{', '.join(enforcing)}, has {', '.join(vms)}",
                             once=f"aa:{node}:{cls}:{vms}")  # fmt: skip

    def _capacity(self, t: float, load: dict[str, tuple[int, int]],
                  nodes: dict[str, Node]) -> None:  # fmt: skip
        for name, (cpus, mem) in sorted(load.items()):
            node = nodes.get(name)
            if node is None:
                continue
            cap = node.capacity
            if cpus > cap.cpus or mem > cap.memory_mib:
                self._report(t, "capacity", f"node/{name}",
                             f"VMs need {cpus} CPUs, {mem} MiB; it has {cap.cpus}, "
                             f"{cap.memory_mib} MiB", once=f"{name}:{cpus}:{mem}")  # fmt: skip

    def _thresholds(self, t: float, specs: dict[str, VMSpec],
                    placements: dict[str, Placement]) -> None:  # fmt: skip
        now = self.cluster.now()
        for vm, placement in sorted(placements.items()):
            spec = specs.get(vm)
            if spec is None:
                continue
            ha = spec.ha
            recent = [f for f in placement.failovers if f > now - ha.failover_period_s]
            if len(recent) > ha.failover_threshold:
                self._report(t, "threshold", f"vm/{vm}",
                             f"{len(recent)} failovers within {ha.failover_period_s:g} s; "
                             f"its threshold is {ha.failover_threshold}",
                             once=f"{vm}:{len(recent)}")  # fmt: skip

    def _intent(self, t: float, hosts: dict[str, list[tuple[str, VMState, int]]],
                nodes: dict[str, Node], placements: dict[str, Placement]) -> None:  # fmt: skip
        for vm, since in sorted(self.stopped_at.items()):
            running = self._running(hosts, vm)
            if running and t - since > STOP_GRACE_S:
                self._report(t, "intent", f"vm/{vm}",
                             f"stopped by the administrator at {since:.1f} s, runs on "
                             f"{', '.join(running)}", once=f"stop:{vm}:{since}")  # fmt: skip
        for name in sorted(self.paused):
            node = nodes.get(name)
            if node is not None and node.admin_state is NodeAdminState.UP:
                self._report(t, "intent", f"node/{name}",
                             "paused by the administrator, now up without a resume",
                             once=f"pause:{name}")  # fmt: skip
        for vm, placement in sorted(placements.items()):
            where = (placement.node, placement.epoch)
            before = self._placements.get(vm)
            self._placements[vm] = where
            if before is None or before == where:
                continue
            node = nodes.get(placement.node)
            if node is not None and node.admin_state is not NodeAdminState.UP:
                self._report(t, "intent", f"vm/{vm}",
                             f"placed on {placement.node}, which is "
                             f"{node.admin_state.value}")  # fmt: skip

    def _recovery(self, t: float, hosts: dict[str, list[tuple[str, VMState, int]]],
                  specs: dict[str, VMSpec], statuses: dict[str, VMStatus],
                  nodes: dict[str, Node], load: dict[str, tuple[int, int]]) -> None:  # fmt: skip
        c = self.cluster
        if not c.store.available:
            self._down_since.clear()
            return
        for vm, spec in sorted(specs.items()):
            status = statuses.get(vm)
            waiting = (
                spec.desired_state == "running"
                and not self._running(hosts, vm)
                and not (status is not None and status.left_failed)
                and self._room(spec, hosts, specs, nodes, load)
            )
            if not waiting:
                self._down_since.pop(vm, None)
                continue
            since = self._down_since.setdefault(vm, t)
            if t - since > self.recovery_slo_s:
                self._report(t, "recovery", f"vm/{vm}",
                             f"not running for {t - since:.1f} s although a node has room "
                             f"(SLO {self.recovery_slo_s:g} s)", once=f"{vm}:{since}")  # fmt: skip

    def _room(self, spec: VMSpec, hosts: dict[str, list[tuple[str, VMState, int]]],
              specs: dict[str, VMSpec], nodes: dict[str, Node],
              load: dict[str, tuple[int, int]]) -> bool:  # fmt: skip
        """Could ``spec`` run on some node now (alive, reachable, up, allowed, with room and
        no anti-affinity partner there that either of the two enforces)?"""
        for name, node in sorted(nodes.items()):
            if self._unfit(name) or node.admin_state is not NodeAdminState.UP:
                continue
            if spec.ha.possible_owners and name not in spec.ha.possible_owners:
                continue
            cpus, mem = load.get(name, (0, 0))
            if cpus + spec.vcpus > node.capacity.cpus:
                continue
            if mem + spec.memory_mib > node.capacity.memory_mib:
                continue
            if any(
                other != spec.name
                and (o := specs.get(other)) is not None
                and (spec.ha.anti_affinity_enforced or o.ha.anti_affinity_enforced)
                and set(o.ha.anti_affinity_classes) & set(spec.ha.anti_affinity_classes)
                and name in self._running(hosts, other)
                for other in hosts
            ):
                continue
            return True
        return False

    def _quarantine(self, t: float, nodes: dict[str, Node]) -> None:
        c = self.cluster
        # No controller can decide while etcd is down or no node could lead (every host run
        # is dead, cut off or hung): a due quarantine's grace starts again when one can.
        if not c.store.available or (c.views and all(self._unfit(n) for n in c.views)):
            self._quarantine_due.clear()
            return
        now, q = c.now(), self._config.quarantine
        # a change of threshold reaches the controller at its next cycle: within the grace,
        # either threshold may be the one it decided on
        self._thresholds_seen.append((t, q.threshold))
        while self._thresholds_seen[0][0] < t - QUARANTINE_GRACE_S:
            self._thresholds_seen.pop(0)
        low = min(th for _, th in self._thresholds_seen)
        high = max(th for _, th in self._thresholds_seen)
        for name, node in sorted(nodes.items()):
            before = self._nodes_before.get(name)
            self._nodes_before[name] = node
            counted = failures_counted(node, q, now)
            quarantined = node.admin_state is NodeAdminState.QUARANTINED
            was = before is not None and before.admin_state is NodeAdminState.QUARANTINED
            # (counted as the controller did, before this quarantine began)
            earlier = before.quarantined_until if before is not None else None
            if quarantined and not was and (n := failures_counted(node, q, now, earlier)) < low:
                self._report(t, "quarantine", f"node/{name}",
                             f"quarantined after {n} failure(s) within "
                             f"{q.period_s:g} s; the threshold is {low}")  # fmt: skip
            if (
                was and not quarantined and before is not None
                and before.quarantined_until is not None and now < before.quarantined_until
                and node.failures_forgiven_at == before.failures_forgiven_at
            ):  # fmt: skip
                self._report(t, "quarantine", f"node/{name}",
                             f"quarantine lifted {before.quarantined_until - now:.1f} s "
                             "before its end, not by the administrator")  # fmt: skip
            due = not quarantined and node.admin_state is not NodeAdminState.DRAINING
            if not (due and counted >= high):
                self._quarantine_due.pop(name, None)
                continue
            since = self._quarantine_due.setdefault(name, t)
            if t - since > QUARANTINE_GRACE_S:
                self._report(t, "quarantine", f"node/{name}",
                             f"declared dead {counted} time(s) within {q.period_s:g} s "
                             f"(threshold {high}), not quarantined for {t - since:.1f} s",
                             once=f"due:{name}:{since}")  # fmt: skip


def failures_counted(
    node: Node, q: QuarantineSettings, now: float, until: float | None = UNSET
) -> int:
    """The failures of ``node`` that count towards its quarantine now: those within the
    period, after the start of its last quarantine (one ending at ``until``: by default
    the node's) and after an admin forgave them."""
    floor = now - q.period_s
    until = node.quarantined_until if until == UNSET else until
    if until is not None:
        floor = max(floor, until - q.duration_s)
    if node.failures_forgiven_at is not None:
        floor = max(floor, node.failures_forgiven_at)
    return sum(1 for f in node.failures if floor < f <= now)
