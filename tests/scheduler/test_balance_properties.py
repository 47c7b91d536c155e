"""Properties of :func:`plan_balance` over random clusters (Hypothesis).

Whatever the cluster - nodes of any size, some dead or paused, VMs with owners, switches,
hard and soft (anti-)affinity, measured CPU use, migrations under way - a balance plan never
breaks a rule (capacity counting both ends of every move, owners, switches, hard
anti-affinity, hard affinity groups kept together, closed nodes, the migration limit per
wave), never leaves a target above the level, never moves a VM twice, never plans more moves
than the VMs on the nodes above the level, and plans nothing for a balanced cluster. Loads
are computed here again, independently of the planner.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hvcluster.models.config import BALANCE_LEVELS
from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.scheduler import ClusterSnapshot, VMView
from hvcluster.scheduler.balance import BalancePlan, CpuUse, plan_balance
from hvcluster.scheduler.drain import InFlight

from .factory import node, snap, vm

pytestmark = pytest.mark.timeout(400)
PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
LEVELS = tuple(BALANCE_LEVELS)


@st.composite
def clusters(draw: st.DrawFn) -> tuple[ClusterSnapshot, CpuUse, list[InFlight], str]:
    count = draw(st.integers(2, 6))
    nodes = []
    for i in range(count):
        nodes.append(
            node(
                f"n{i}",
                cpus=draw(st.sampled_from([4, 8, 16])),
                memory=draw(st.sampled_from([4096, 8192, 16384])),
                alive=draw(st.sampled_from([True] * 6 + [False])),
                admin=draw(st.sampled_from([NodeAdminState.UP] * 6 + [NodeAdminState.PAUSED])),
                switches=("lan",) if draw(st.booleans()) or i == 0 else (),
            )
        )
    names = [n.name for n in nodes]
    used = Counter[str]()
    used_cpus = Counter[str]()
    vms: list[VMView] = []
    cpu_vms: dict[str, float] = {}
    for i in range(draw(st.integers(0, 18))):
        where = draw(st.sampled_from(names))
        cap = next(n for n in nodes if n.name == where).node.capacity
        memory = draw(st.sampled_from([512, 1024, 2048, 3072]))
        vcpus = draw(st.integers(1, 4))
        if used[where] + memory > cap.memory_mib or used_cpus[where] + vcpus > cap.cpus:
            continue
        used[where] += memory
        used_cpus[where] += vcpus
        name = f"v{i}"
        vms.append(
            vm(
                name,
                vcpus=vcpus,
                memory=memory,
                on=where,
                possible=tuple(draw(st.lists(st.sampled_from(names), unique=True, max_size=3))),
                classes=tuple(draw(st.lists(st.sampled_from(["a", "b"]), unique=True, max_size=1))),
                enforced=draw(st.booleans()),
                together=tuple(
                    draw(st.lists(st.sampled_from(["x", "y"]), unique=True, max_size=1))
                ),
                together_enforced=draw(st.booleans()),
                switches=("lan",) if draw(st.integers(0, 4)) == 0 else (),
                migrating=draw(st.integers(0, 8)) == 0,
            )
        )
        cpu_vms[name] = draw(st.floats(0, vcpus))
    other = {n: draw(st.floats(0, 1)) for n in names}
    flights = []
    if len(names) > 2 and draw(st.booleans()):
        flights.append(InFlight("elsewhere", names[1], names[2]))
    s = snap(nodes, vms, migration={"max_parallel_per_node": draw(st.integers(1, 3))})
    return s, CpuUse(other=other, vms=cpu_vms), flights, draw(st.sampled_from(LEVELS))


def _open(s: ClusterSnapshot) -> list[str]:
    return [n.name for n in s.nodes.values() if n.alive and n.admin_state is NodeAdminState.UP]


def _loads(
    s: ClusterSnapshot, cpu: CpuUse, where: dict[str, str]
) -> dict[str, tuple[float, float]]:
    """node -> (CPU cores, memory MiB) used, VMs at ``where``, for open nodes."""
    out = {}
    for n in _open(s):
        here = [v for v in s.vms.values() if where.get(v.name) == n]
        out[n] = (
            cpu.other.get(n, 0.0) + sum(cpu.vms.get(v.name, 0.0) for v in here),
            float(sum(v.spec.memory_mib for v in here)),
        )
    return out


def _limits(s: ClusterSnapshot, cpu: CpuUse, level: str) -> dict[str, tuple[float, float]]:
    loads = _loads(s, cpu, _placed(s))
    caps = {n: s.nodes[n].node.capacity for n in loads}
    avg_cpu = sum(c for c, _ in loads.values()) / sum(caps[n].cpus for n in loads)
    avg_mem = sum(m for _, m in loads.values()) / sum(caps[n].memory_mib for n in loads)
    t = BALANCE_LEVELS[level]
    return {
        n: (max(t, avg_cpu) * caps[n].cpus, max(t, avg_mem) * caps[n].memory_mib) for n in loads
    }


def _placed(s: ClusterSnapshot) -> dict[str, str]:
    return {v.name: v.placement.node for v in s.vms.values() if v.placement is not None}


def _over(s: ClusterSnapshot, cpu: CpuUse, level: str) -> set[str]:
    if not _open(s):
        return set()
    limits = _limits(s, cpu, level)
    loads = _loads(s, cpu, _placed(s))
    eps = 1e-6
    return {n for n, (c, m) in loads.items() if c > limits[n][0] + eps or m > limits[n][1] + eps}


def _check(s: ClusterSnapshot, cpu: CpuUse, flights: list[InFlight], level: str) -> BalancePlan:
    plan = plan_balance(s, cpu, flights, level)
    assert plan == plan_balance(s, cpu, flights, level)  # the same snapshot, the same plan
    moved = [m.vm for m in plan.moves]
    assert len(moved) == len(set(moved)), "a VM moves once"
    over = _over(s, cpu, level)
    assert set(plan.over) == over
    on_over = [v for v in s.vms.values() if v.placement and v.placement.node in over]
    assert len(plan.moves) <= len(on_over)
    if not over:
        assert plan.moves == ()
    open_nodes = set(_open(s))
    final = _placed(s)
    hosts: dict[str, set[str]] = {n: set() for n in s.nodes}
    for v in s.vms.values():
        for h in v.hosts():
            hosts.setdefault(h, set()).add(v.name)
    for m in plan.moves:
        v = s.vms[m.vm]
        assert v.placement is not None and v.placement.node == m.source in over
        assert v.is_running_as_placed and not v.migrating
        assert m.target in open_nodes and m.target != m.source
        owners = v.spec.ha.possible_owners
        assert not owners or m.target in owners
        assert {n.switch for n in v.spec.nics} <= set(s.nodes[m.target].node.switches)
        final[m.vm] = m.target
        hosts[m.target].add(m.vm)
        assert m.reason
    for f in flights:  # the target of a migration under way is reserved
        hosts[f.target].add(f.vm)
    for n, names in hosts.items():
        cap = s.nodes[n].node.capacity
        specs = [s.vms[x].spec for x in names if x in s.vms]
        assert sum(x.vcpus for x in specs) <= cap.cpus, n
        assert sum(x.memory_mib for x in specs) <= cap.memory_mib, n
    before = _placed(s)
    for m in plan.moves:  # hard anti-affinity where it lands, with all that stays there
        a = s.vms[m.vm].spec.ha
        # (a pair that shared a node before and moves on together, as a hard affinity group
        # does, breaks no rule anew: rules that contradict each other were broken already)
        others = (
            x
            for x, n in final.items()
            if n == m.target and x != m.vm and before.get(x) != before[m.vm]
        )
        for other in others:
            b = s.vms[other].spec.ha
            shared = set(a.anti_affinity_classes) & set(b.anti_affinity_classes)
            assert not (shared and (a.anti_affinity_enforced or b.anti_affinity_enforced))
    for x in s.vms.values():  # hard affinity: VMs together on an open node stay together
        for y in s.vms.values():
            shared = set(x.spec.ha.affinity_classes) & set(y.spec.ha.affinity_classes)
            hard = x.spec.ha.affinity_enforced or y.spec.ha.affinity_enforced
            if shared and hard and before.get(x.name) == before.get(y.name) in open_nodes:
                assert final[x.name] == final[y.name], (x.name, y.name)
    if plan.moves:
        limits = _limits(s, cpu, level)
        after = _loads(s, cpu, final)
        for m in plan.moves:
            c, mem = after[m.target]
            assert c <= limits[m.target][0] + 1e-6 and mem <= limits[m.target][1] + 1e-6
    limit = s.config.migration.max_parallel_per_node
    for wave in {m.wave for m in plan.moves}:
        busy = Counter[str]()
        for m in plan.moves:
            if m.wave == wave:
                busy[m.source] += 1
                busy[m.target] += 1
        if wave == 1:
            for f in flights:
                busy[f.source] += 1
                busy[f.target] += 1
        moves_here = Counter(n for m in plan.moves if m.wave == wave for n in (m.source, m.target))
        assert all(busy[n] <= limit for n in moves_here), (wave, busy)
    return plan


@PROPERTY_SETTINGS
@given(clusters())
def test_a_balance_plan_never_breaks_a_rule(
    case: tuple[ClusterSnapshot, CpuUse, list[InFlight], str],
) -> None:
    _check(*case)


@PROPERTY_SETTINGS
@given(clusters())
def test_after_a_complete_plan_nothing_is_left_to_move(
    case: tuple[ClusterSnapshot, CpuUse, list[InFlight], str],
) -> None:
    """Applying a plan that left no node above the level yields a balanced cluster: the
    next plan is empty (the balancer does not chase its own tail)."""
    s, cpu, _, level = case
    plan = plan_balance(s, cpu, (), level)
    if plan.unresolved or not plan.moves:
        return
    moved = {m.vm: m.target for m in plan.moves}
    vms = []
    for v in s.vms.values():
        if v.name in moved and v.placement is not None and v.status is not None:
            p = v.placement.model_copy(update={"node": moved[v.name]})
            st_ = v.status.model_copy(update={"node": moved[v.name]})
            v = VMView(v.spec, placement=p, status=st_)
        vms.append(v)
    again = snap(s.nodes.values(), vms, migration=s.config.migration.model_dump())
    assert plan_balance(again, cpu, (), level).moves == ()


def test_a_group_whose_own_rules_contradict_moves_whole_and_breaks_nothing_anew() -> None:
    """Found by the property above in CI: two VMs kept together (hard affinity) that also
    share a hard anti-affinity class already break a rule where they are. Moving them on
    together breaks nothing new, which is what the checks must judge."""
    nodes = [node("n0", cpus=8, memory=4096), node("n1", cpus=8, memory=16384)]
    vms = [
        vm(f"v{i}", vcpus=1, memory=memory, on="n0", classes=("a",), enforced=apart,
           together=("x",), together_enforced=not apart)
        for i, (memory, apart) in enumerate([(1536, False), (2048, True)])
    ]  # fmt: skip
    cpu = CpuUse(other={"n0": 0.0, "n1": 0.0}, vms={"v0": 0.0, "v1": 0.0})
    plan = _check(snap(nodes, vms), cpu, [], "low")
    assert sorted((m.vm, m.target) for m in plan.moves) == [("v0", "n1"), ("v1", "n1")]
