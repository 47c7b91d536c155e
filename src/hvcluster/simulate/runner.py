"""Run a scenario: the real daemons on a :class:`SimCluster` on a :class:`ManualClock`,
the timeline's faults and admin commands at their virtual times, the invariants checked after
every step, and the result (the cluster's event log merged with the simulation's own lines,
the final placement, any violations).

Determinism: the clock starts at :data:`START` (a fixed wall time), every random choice
comes from the scenario's seed (the sim driver's dice, the VMs' uids), and the event loop
runs one task at a time in the order they became ready; the same scenario and seed give the
same output, byte for byte.
"""

from __future__ import annotations

import random
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hvcluster.clock import ManualClock
from hvcluster.drivers.sim.model import SimParams
from hvcluster.models.base import encode, remembering_decodes
from hvcluster.models.errors import HvcError
from hvcluster.models.lifecycle import NodeAdminState, VMState
from hvcluster.models.vm import VMSpec
from hvcluster.simulate.admin import Admin
from hvcluster.simulate.cluster import SimCluster
from hvcluster.simulate.invariants import Checker, Violation
from hvcluster.simulate.scenario import LEADER, Do, Scenario, Step, config_with

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z: virtual 0 on the wall clock


@dataclass(frozen=True)
class Line:
    """One line of a run's log: a cluster event or the simulation's own note."""

    time: float  # virtual seconds
    kind: str
    subject: str
    actor: str
    reason: str

    def text(self) -> str:
        return f"+{self.time:9.3f}  {self.kind}  {self.subject}  {self.actor}  {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"time": round(self.time, 3), "kind": self.kind, "subject": self.subject,
                "actor": self.actor, "reason": self.reason}  # fmt: skip


@dataclass
class Result:
    scenario: str
    seed: int
    log: list[Line] = field(default_factory=list)
    placement: dict[str, dict[str, Any]] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)

    def text(self) -> str:
        out = [f"# scenario {self.scenario or '(unnamed)'}, seed {self.seed}", "# events"]
        out += [line.text() for line in self.log]
        out.append("# final placement")
        for vm, where in self.placement.items():
            out.append(f"{vm}  {where['state']}  {where['node'] or '-'}  epoch {where['epoch']}")
        out.append(f"# violations: {len(self.violations)}")
        out += [v.line() for v in self.violations]
        return "\n".join(out) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "events": [line.as_dict() for line in self.log],
            "placement": self.placement,
            "violations": [v.as_dict() for v in self.violations],
        }


class Run:
    """One run of ``scenario`` with ``seed`` (the scenario's own when None)."""

    def __init__(self, scenario: Scenario, seed: int | None = None) -> None:
        self.scenario = scenario
        self.seed = scenario.sim.seed if seed is None else seed
        self.rng = random.Random(self.seed)
        self.clock = ManualClock(START, stop_when_idle=True)
        self.notes: list[tuple[int, Line]] = []  # (events logged before it, the note)
        self._seq = 0
        self.config = scenario.config()
        # each VM's CPU use (percent of one host CPU) as the scenario sets it: every host's
        # sim driver reports it, so it follows the VM wherever it runs
        self.cpu = {v.name: v.cpu_percent for v in scenario.vms if v.cpu_percent is not None}

    async def after(self) -> int:
        """How many cluster events were logged so far: a note goes after those in the log
        (a position in the log, not a time: an action's effects may be logged at the same
        virtual time as the action)."""
        if self.cluster.store.available:
            self._seq = await self.cluster.events.last_seq()
        return self._seq

    def note(self, after: int, kind: str, subject: str, reason: str) -> None:
        line = Line(self.clock.now() - START, kind, subject, "sim", reason)
        self.notes.append((after, line))

    async def run(self) -> Result:
        sim = self.scenario.sim
        with tempfile.TemporaryDirectory(prefix="hvc-sim-") as tmp:
            params = SimParams(boot_s=sim.boot_s, shutdown_s=0.2)
            cluster = SimCluster(Path(tmp), self.config, self.clock, sim.cpus, sim.memory_mib,
                                 self.seed, params, memory_transport=True)  # fmt: skip
            for node in self.scenario.nodes:
                if node.cpus is not None:
                    cluster.host_cpus[node.name] = node.cpus
                if node.memory_mib is not None:
                    cluster.host_memory[node.name] = node.memory_mib
            self.cluster = cluster
            self.admin = Admin(cluster.store, cluster.keys, self.clock.wall)
            self.checker = Checker(cluster, sim.recovery_slo_s, START)
            try:
                with remembering_decodes():
                    return await self._run(cluster)
            finally:
                await cluster.stop()

    async def _run(self, cluster: SimCluster) -> Result:
        sim = self.scenario.sim
        await cluster.store.put(cluster.keys.config, encode(self.config))
        for vm in self.scenario.vms:
            uid = uuid.UUID(int=self.rng.getrandbits(128)).hex
            spec = VMSpec(name=vm.name, uid=uid, vcpus=vm.vcpus, memory_mib=vm.memory_mib,
                          desired_state=vm.desired_state, ha=vm.ha)  # fmt: skip
            await cluster.store.put(cluster.keys.vm(spec.name), encode(spec))
            if vm.desired_state == "stopped":
                self.checker.stopped_at[vm.name] = 0.0
        for node in self.scenario.nodes:
            await self._launch(node.name)
        steps = sorted(enumerate(self.scenario.timeline), key=lambda s: (s[1].at, s[0]))
        ticks = round(sim.duration_s / sim.step_s)
        for tick in range(ticks + 1):
            t = tick * sim.step_s
            while steps and steps[0][1].at <= t + 1e-9:
                await self._do(steps.pop(0)[1])
            if tick == ticks:
                break
            await self.clock.advance(START + (tick + 1) * sim.step_s - self.clock.now())
            after = await self.after()
            for fenced, vms in (await cluster.fence_overdue()).items():
                self.note(after, "sim.watchdog_fired", f"node/{fenced}",
                          f"watchdog deadline passed: killed {', '.join(vms)}")  # fmt: skip
            await self.checker.check()
        return await self._result(cluster)

    async def _launch(self, node: str) -> None:
        await self.cluster.launch(node)
        self.cluster.drivers[node].cpu_set = self.cpu  # shared: a ``cpu`` step reaches all

    def _node(self, step: Step) -> str | None:
        if step.node != LEADER:
            return step.node
        for name in sorted(self.cluster.daemons):
            daemon = self.cluster.daemons[name]
            if name in self.cluster.tasks and daemon.controller and daemon.controller.leading:
                return name
        return None

    async def _do(self, step: Step) -> None:
        """Carry out one timeline step (noted in the log, with why when it cannot be)."""
        c, node = self.cluster, self._node(step)
        subject = f"node/{node}" if step.node else f"vm/{step.vm}" if step.vm else "cluster"
        after = await self.after()
        try:
            why = await self._apply(step, node)
        except HvcError as e:
            why = f"refused: {e}"
        self.note(after, f"sim.{step.do.value}", subject, why or "done")
        if step.do is Do.ETCD_UP:
            c.store.expire_leases()

    async def _apply(self, step: Step, node: str | None) -> str:
        c = self.cluster
        if step.node and node is None:
            return "no leader now: nothing done"
        match step.do:
            case Do.CRASH:
                if node not in c.tasks:
                    return "not running: nothing done"
                # A dead host's goodbyes never reach etcd: cut it off first, so its daemon's
                # cleanup on cancellation (resigning the election, say) cannot write.
                c.views[node].set_cut(True)
                await c.crash(node)
            case Do.RESTART:
                assert node is not None
                if node in c.tasks:
                    return "running already: nothing done"
                await self._launch(node)
            case Do.HANG | Do.UNHANG:
                assert node is not None
                c.views[node].set_hung(step.do is Do.HANG)
            case Do.PARTITION | Do.HEAL:
                assert node is not None
                c.views[node].set_cut(step.do is Do.PARTITION)
            case Do.ETCD_DOWN | Do.ETCD_UP:
                c.store.set_available(step.do is Do.ETCD_UP)
            case Do.VM_CRASH:
                hosts = await c.hosts_running(step.vm)
                if not hosts:
                    return "not running: nothing done"
                c.drivers[hosts[0]].inject_crash(step.vm)
            case Do.PAUSE | Do.DRAIN:
                assert node is not None
                target = NodeAdminState.PAUSED if step.do is Do.PAUSE else NodeAdminState.DRAINING
                await self.admin.set_node(node, target)
                self.checker.paused.add(node)
            case Do.RESUME:
                assert node is not None
                held = await self.admin.away_from(node) if step.failback == "none" else {}
                await self.admin.set_node(node, NodeAdminState.UP, step.clear_quarantine, held)
                self.checker.paused.discard(node)
            case Do.START_VM:
                await self.admin.set_desired(step.vm, "running")
                self.checker.stopped_at.pop(step.vm, None)
            case Do.STOP_VM:
                await self.admin.set_desired(step.vm, "stopped")
                self.checker.stopped_at[step.vm] = self.clock.now() - START
            case Do.CONFIG:
                self.config = config_with(self.config, step.set)
                what = ", ".join(f"{k}={v}" for k, v in sorted(step.set.items()))
                await self.admin.set_config(self.config, what)
            case Do.CPU:
                assert step.cpu_percent is not None
                self.cpu[step.vm] = step.cpu_percent
        return ""

    async def _result(self, cluster: SimCluster) -> Result:
        if not cluster.store.available:
            cluster.store.set_available(True)  # to read the log and the records at the end
        logged = await cluster.events.recent(100_000)
        # one log: the cluster's events in their order, each note after the events logged
        # before it was made
        merged = sorted(
            [(e.seq, 0, i, Line(e.event.time - START, e.event.kind, e.event.subject,
                                e.event.actor, e.event.reason)) for i, e in enumerate(logged)]
            + [(after, 1, i, line) for i, (after, line) in enumerate(self.notes)],
            key=lambda x: (x[0], x[1], x[2]),
        )  # fmt: skip
        result = Result(self.scenario.name, self.seed, [m[3] for m in merged])
        for vm in sorted(v.name for v in self.scenario.vms):
            status = await cluster.status(vm)
            hosts = await cluster.hosts_running(vm)
            placement = await cluster.placement(vm)
            result.placement[vm] = {
                "node": hosts[0] if hosts else "",
                "state": VMState.RUNNING.value if hosts else
                (status.state.value if status else "pending"),
                "epoch": placement.epoch if placement else 0,
                "placed_on": placement.node if placement else "",
            }  # fmt: skip
        result.violations = list(self.checker.violations)
        return result


async def run_scenario(scenario: Scenario, seed: int | None = None) -> Result:
    return await Run(scenario, seed).run()
