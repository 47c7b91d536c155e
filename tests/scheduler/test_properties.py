"""Properties of :func:`plan` over random snapshots (Hypothesis).

Whatever the cluster looks like - nodes dead, suspect, fenced, paused, quarantined, full;
VMs placed anywhere, with stale statuses, odd epochs, migrations under way and every
policy - a plan never over-commits a node (counting the targets of migrations under way),
never breaks hard anti-affinity, never places on a node that cannot take VMs, outside a
VM's possible owners or lacking its switches or volumes, never starts a VM that may still
run elsewhere, never fails back a VM that is moving, always raises the epoch, and is the
same for the same snapshot.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hvcluster.models.lifecycle import NodeAdminState, VMState
from hvcluster.models.vm import FailbackMode, FailbackPolicy, Priority
from hvcluster.scheduler import (
    ClusterSnapshot,
    Decision,
    Failback,
    LeaveFailed,
    NodeView,
    Place,
    Quarantine,
    Recover,
    Unplace,
    VMView,
    Wait,
    plan,
)

from .factory import NOW, node, snap, vm

ACTIVE = {VMState.STARTING, VMState.RUNNING, VMState.PAUSED, VMState.MIGRATING, VMState.STOPPING}
CLASSES = ("a", "b", "c")
GROUPS = ("g1", "g2")
SWITCHES = ("lan", "dmz")
VOLUMES = ("csv1", "csv2")
# 300 examples are ~25 s of CPU on a free core; on a shared one (other tests beside it, a
# busy machine) 130 s were seen: above the default hang guard of 120 s, not a hang.
pytestmark = pytest.mark.timeout(400)
PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# Ages of an outage around the interesting edges (fence_after + margin = 4.5 s, plus the
# mass-failure grace of 30 s), and anything else.
GONE_FOR = st.sampled_from([0.0, 1.0, 2.4, 2.6, 4.4, 4.5, 10.0, 34.4, 34.6, 100.0]) | st.floats(
    0, 7200
)
PAST_FENCING = st.sampled_from([4.5, 5.0, 10.0, 40.0, 3600.0])

# Random snapshots come in three profiles, so that every part of the plan gets exercised:
# "mixed" (anything goes), "failover" (dead nodes holding running VMs), "failback" (running
# VMs away from their preferred owners, with failback on).
PROFILES = ("mixed", "failover", "failback")
T = TypeVar("T")


def mostly(usual: T, *rest: T) -> st.SearchStrategy[T]:
    """``usual`` about three times out of four, else one of ``rest``."""
    return st.one_of(st.just(usual), st.just(usual), st.just(usual), st.sampled_from(rest))


@st.composite
def nodes_strategy(draw: st.DrawFn, now: float, profile: str) -> list[NodeView]:
    count = draw(st.integers(1, 6) if profile == "mixed" else st.integers(2, 6))
    dead_odds = [True] * 5 + [False] if profile == "mixed" else [True, True, False]
    out = []
    for i in range(count):
        alive = draw(st.sampled_from(dead_odds))
        gone_for = draw(PAST_FENCING | GONE_FOR if profile == "failover" else GONE_FOR)
        failures = st.lists(st.floats(now - 7200, now), max_size=4)
        out.append(
            node(
                f"n{i}",
                cpus=draw(st.integers(1, 16)),
                memory=draw(st.sampled_from([512, 2048, 4096, 8192])),
                alive=alive,
                gone_since=None if alive else now - gone_for,
                fenced=False if alive else draw(st.sampled_from([False, False, True])),
                admin=draw(mostly(NodeAdminState.UP, *NodeAdminState)),
                failures=draw(failures if profile == "mixed" else st.just([])),
                quarantined_until=draw(st.none() | st.floats(now - 7200, now + 7200)),
                switches=tuple(draw(mostly(list(SWITCHES), [], list(SWITCHES[:1])))),
                volumes=tuple(draw(mostly(list(VOLUMES), [], list(VOLUMES[1:])))),
            )
        )
    return out


@st.composite
def vm_strategy(
    draw: st.DrawFn, name: str, node_names: list[str], now: float, profile: str
) -> VMView:
    where = st.sampled_from([*node_names * 4, "ghost"])
    calm = profile != "mixed"  # fewer obstacles, so that moves happen
    possible = draw(
        st.one_of(st.just([]), st.lists(st.sampled_from(node_names), unique=True, max_size=3))
    )
    preferred_from = possible or node_names
    preferred = draw(
        st.lists(
            st.sampled_from(preferred_from),
            unique=True,
            min_size=1 if profile == "failback" else 0,
            max_size=3,
        )
    )
    group = draw(st.sampled_from(["", *GROUPS]))
    others = [g for g in GROUPS if g != group]
    after = draw(mostly([], [others[0]], others))
    modes = [FailbackMode.IMMEDIATE, FailbackMode.WINDOW] if calm else list(FailbackMode)
    mode = draw(st.sampled_from(modes))
    start, end = draw(st.integers(0, 23)), draw(st.integers(0, 23))
    if mode is FailbackMode.WINDOW and start == end:
        end = (start + 1) % 24
    state: VMState | None = draw(mostly(VMState.RUNNING, None, *VMState))
    placed = draw(where if calm else st.none() | where)
    status_on: str | None = draw(mostly(None, *node_names, "ghost"))
    view = vm(
        name,
        vcpus=draw(st.integers(1, 4)),
        memory=draw(st.sampled_from([128, 256, 512, 1024])),
        on=placed,
        epoch=draw(st.integers(1, 5)),
        state=state if (placed or status_on) else None,
        status_on=status_on,
        status_epoch=draw(mostly(None, *range(7))),
        desired=draw(mostly("running", "stopped")),
        priority=draw(st.sampled_from(list(Priority))),
        preferred=tuple(preferred),
        possible=tuple(possible),
        classes=tuple(draw(st.lists(st.sampled_from(CLASSES), unique=True, max_size=2))),
        enforced=draw(st.booleans()),  # either side of a shared class
        threshold=draw(mostly(3, 0, 1)),
        failovers=draw(st.lists(st.floats(now - 30000, now), max_size=2)),
        failed_reason=draw(mostly("", "left failed")),
        group=group,
        after=tuple(after),
        failback=FailbackPolicy(mode=mode, window_start_hour=start, window_end_hour=end),
        pending_since=draw(st.none() | st.floats(now - 60, now)),
        moving_to=draw(mostly(None, *node_names)) if placed else None,
        migrating_to=draw(mostly(None, *node_names)) if placed else None,
        migrating=draw(mostly(False, True)),
        switches=tuple(draw(st.lists(st.sampled_from(SWITCHES), unique=True, max_size=2))),
        volumes=tuple(draw(st.lists(st.sampled_from(VOLUMES), unique=True, max_size=2))),
    )
    return replace(view, epoch_floor=draw(st.integers(0, 6)))


@st.composite
def snapshots(draw: st.DrawFn) -> ClusterSnapshot:
    profile = draw(st.sampled_from(PROFILES))
    now = NOW + draw(st.sampled_from([0.0, 3600.0 * draw(st.integers(0, 23))]))
    nodes = draw(nodes_strategy(now, profile))
    names = [n.name for n in nodes]
    count = draw(st.integers(0, 12))
    vms = [draw(vm_strategy(f"v{i}", names, now, profile)) for i in range(count)]
    return snap(
        nodes,
        vms,
        now=now,
        start_group_delay_s=draw(st.sampled_from([0.0, 30.0])),
        mass_failure_grace_s=draw(st.sampled_from([0.0, 30.0])),
    )


def arrivals(decisions: tuple[Decision, ...]) -> dict[str, list[str]]:
    """node -> VMs the plan sends there."""
    out: dict[str, list[str]] = defaultdict(list)
    for d in decisions:
        if isinstance(d, Place):
            out[d.node].append(d.vm)
        elif isinstance(d, Recover | Failback):
            out[d.to_node].append(d.vm)
    return out


def residents(s: ClusterSnapshot, name: str) -> set[str]:
    """VMs that hold resources on a node, computed here independently of the scheduler."""
    found = set()
    for v in s.vms.values():
        if v.placement is not None and name in (v.placement.node, v.placement.moving_to):
            found.add(v.name)
        if v.migrating_to == name:  # the target of a migration under way is reserved
            found.add(v.name)
        if v.status is not None and v.status.node == name and v.status.state in ACTIVE:
            found.add(v.name)
    return found


def reclaimable(s: ClusterSnapshot, name: str) -> bool:
    """The node is gone and cannot be running anything any more."""
    n = s.nodes.get(name)
    if n is None or n.alive:
        return False
    if n.fenced:
        return True
    cfg = s.config
    assert n.gone_since is not None
    return s.now >= n.gone_since + cfg.fence_after_s + cfg.recovery_margin_s


def check_no_node_is_over_committed(s: ClusterSnapshot) -> None:
    for name, new in arrivals(plan(s)).items():
        vms = residents(s, name) | set(new)
        cap = s.nodes[name].node.capacity
        assert sum(s.vms[v].spec.vcpus for v in vms) <= cap.cpus, name
        assert sum(s.vms[v].spec.memory_mib for v in vms) <= cap.memory_mib, name


def check_hard_anti_affinity_is_never_violated(s: ClusterSnapshot) -> None:
    for name, new in arrivals(plan(s)).items():
        together = residents(s, name) | set(new)
        for x in new:
            a = s.vms[x].spec.ha
            for y in together - {x}:
                b = s.vms[y].spec.ha
                shared = set(a.anti_affinity_classes) & set(b.anti_affinity_classes)
                hard = a.anti_affinity_enforced or b.anti_affinity_enforced
                assert not (shared and hard), f"{x} and {y} share {shared} on {name}"


def check_targets_are_open_nodes_among_possible_owners(s: ClusterSnapshot) -> None:
    decisions = plan(s)
    quarantined = {d.node for d in decisions if isinstance(d, Quarantine)}
    for name, new in arrivals(decisions).items():
        target = s.nodes[name]
        assert target.alive, name
        assert target.admin_state is NodeAdminState.UP, name
        assert name not in quarantined, name
        for v in new:
            ha = s.vms[v].spec.ha
            assert not ha.possible_owners or name in ha.possible_owners, (v, name)
    for d in decisions:
        if isinstance(d, Recover | Failback):
            assert d.to_node != d.from_node


def check_targets_have_the_vms_switches_and_volumes(s: ClusterSnapshot) -> None:
    for name, new in arrivals(plan(s)).items():
        node = s.nodes[name].node
        for v in new:
            spec = s.vms[v].spec
            assert {nic.switch for nic in spec.nics} <= set(node.switches), (v, name)
            assert {d.volume for d in spec.disks} <= set(node.volumes), (v, name)


def check_a_vm_is_never_started_while_it_may_run_elsewhere(s: ClusterSnapshot) -> None:
    for d in plan(s):
        if not isinstance(d, Place | Recover):
            continue
        v = s.vms[d.vm]
        if isinstance(d, Place):
            assert v.placement is None
        else:
            assert v.placement is not None and v.placement.node == d.from_node
            if d.from_dead:
                assert reclaimable(s, d.from_node), d
            else:
                assert v.status is not None and v.status.state is VMState.FAILED
        st = v.status
        if st is not None and st.state in ACTIVE:
            assert reclaimable(s, st.node), (d, st)


def check_a_moving_vm_is_not_failed_back(s: ClusterSnapshot) -> None:
    for d in plan(s):
        if isinstance(d, Failback):
            v = s.vms[d.vm]
            assert not v.migrating and not v.moving, d


def check_every_epoch_rises(s: ClusterSnapshot) -> None:
    for d in plan(s):
        if isinstance(d, Place | Recover):
            v = s.vms[d.vm]
            assert d.epoch > v.epoch_floor
            assert v.placement is None or d.epoch > v.placement.epoch
            assert v.status is None or d.epoch > v.status.epoch


def check_plan_is_deterministic(s: ClusterSnapshot) -> None:
    first = plan(s)
    assert plan(s) == first
    shuffled = ClusterSnapshot(
        now=s.now,
        config=s.config,
        nodes=dict(reversed(list(s.nodes.items()))),
        vms=dict(reversed(list(s.vms.items()))),
    )
    assert plan(shuffled) == first


def check_one_decision_per_vm_each_with_a_reason(s: ClusterSnapshot) -> None:
    decisions = plan(s)
    seen: set[str] = set()
    for d in decisions:
        assert d.reason.strip()
        if d.subject.startswith("vm/"):
            assert d.subject not in seen, d
            seen.add(d.subject)
            v = s.vms[d.subject.removeprefix("vm/")]
            if isinstance(d, Place | Recover | Failback | LeaveFailed | Wait):
                assert v.wants_running
                assert not v.failed_reason
            if isinstance(d, Unplace):
                assert not v.wants_running and v.placement is not None


CHECKS = (
    check_no_node_is_over_committed,
    check_hard_anti_affinity_is_never_violated,
    check_targets_are_open_nodes_among_possible_owners,
    check_targets_have_the_vms_switches_and_volumes,
    check_a_vm_is_never_started_while_it_may_run_elsewhere,
    check_a_moving_vm_is_not_failed_back,
    check_every_epoch_rises,
    check_plan_is_deterministic,
    check_one_decision_per_vm_each_with_a_reason,
)


# One generated snapshot is checked against every property: generating snapshots (pydantic
# models) is what costs time, so they are shared.
@PROPERTY_SETTINGS
@given(snapshots())
def test_plan_properties(s: ClusterSnapshot) -> None:
    for kind in sorted({type(d).__name__ for d in plan(s)}):
        event(kind)  # shown by pytest --hypothesis-show-statistics
    for check in CHECKS:
        check(s)
