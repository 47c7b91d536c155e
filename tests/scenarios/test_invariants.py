"""Every invariant the simulator checks can fire: each test breaks one on purpose, with the
hypervisors (sim drivers) or the records of a running simulated cluster, and the checker
names it. A rule that could not fire would pass every fuzz run for nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hvcluster.clock import ManualClock
from hvcluster.models.base import decode, encode
from hvcluster.models.config import ClusterConfig, QuarantineSettings
from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.models.node import Node
from hvcluster.models.vm import HAPolicy, Placement, VMSpec
from hvcluster.simulate.cluster import FAST, SimCluster
from hvcluster.simulate.invariants import QUARANTINE_GRACE_S, Checker
from hvcluster.simulate.runner import START, run_scenario
from hvcluster.simulate.scenario import parse_scenario

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[SimCluster]:
    """Two nodes, n1 and n2, their daemons running, on a manual clock."""
    c = SimCluster(tmp_path, FAST, ManualClock(START, stop_when_idle=True), memory_transport=True)
    await c.start("n1", "n2")
    try:
        yield c
    finally:
        await c.stop()


def checker(c: SimCluster) -> Checker:
    return Checker(c, recovery_slo_s=20.0, start=START)


async def spec(c: SimCluster, name: str, vcpus: int = 1, **ha: object) -> VMSpec:
    """A VM's spec written to the store, its desired state stopped (no controller acts on
    it): what the test starts, it starts on a hypervisor itself."""
    vm = VMSpec(name=name, uid=uuid.uuid4().hex, vcpus=vcpus, memory_mib=256,
                desired_state="stopped", ha=HAPolicy.model_validate(ha))  # fmt: skip
    await c.store.put(c.keys.vm(name), encode(vm))
    return vm


async def node(c: SimCluster, name: str) -> Node:
    kv = await c.store.get(c.keys.node(name))
    assert kv is not None
    return decode(Node, kv.key, kv.value)


async def put_node(c: SimCluster, record: Node) -> None:
    await c.store.put(c.keys.node(record.name), encode(record))


def rules(check: Checker) -> list[str]:
    return [v.rule for v in check.violations]


async def test_a_vm_on_two_hosts_is_two_copies(cluster: SimCluster) -> None:
    check = checker(cluster)
    vm = await spec(cluster, "x")
    await check.check()
    assert rules(check) == []
    for host in ("n1", "n2"):
        await cluster.drivers[host].start(vm, 1)
    await check.check()
    assert "two-copies" in rules(check)


async def test_a_start_on_a_node_cut_off_is_a_dead_start(cluster: SimCluster) -> None:
    check = checker(cluster)
    vm = await spec(cluster, "x")
    cluster.views["n2"].set_cut(True)
    await cluster.drivers["n2"].start(vm, 1)
    await check.check()
    assert [v.detail for v in check.violations if v.rule == "dead-start"] == [
        "started on n2 (epoch 1), which is cut off from etcd"
    ]


async def test_a_vm_off_its_possible_owners_breaks_a_hard_rule(cluster: SimCluster) -> None:
    check = checker(cluster)
    vm = await spec(cluster, "x", possible_owners=["n1"])
    await cluster.drivers["n2"].start(vm, 1)
    await check.check()
    assert rules(check) == ["hard-rule"]


async def test_two_vms_of_an_enforced_class_on_one_node_break_a_hard_rule(
    cluster: SimCluster,
) -> None:
    check = checker(cluster)
    for name in ("a", "b"):
        vm = await spec(cluster, name, anti_affinity_classes=["db"], anti_affinity_enforced=True)
        await cluster.drivers["n1"].start(vm, 1)
    await check.check()
    assert rules(check) == ["hard-rule"]


async def test_vms_needing_more_than_a_node_has_break_capacity(cluster: SimCluster) -> None:
    check = checker(cluster)
    n1 = await node(cluster, "n1")
    await put_node(cluster, n1.model_copy(update={"capacity": n1.capacity.model_copy(
        update={"cpus": 1})}))  # fmt: skip
    await cluster.drivers["n1"].start(await spec(cluster, "x", vcpus=2), 1)
    await check.check()
    assert rules(check) == ["capacity"]


async def test_more_failovers_than_the_threshold_break_it(cluster: SimCluster) -> None:
    check = checker(cluster)
    vm = await spec(cluster, "x", failover_threshold=1)
    now = cluster.now()
    placement = Placement(node="n1", epoch=3, failovers=(now - 2, now - 1), uid=vm.uid)
    await cluster.store.put(cluster.keys.placement("x"), encode(placement))
    await check.check()
    assert rules(check) == ["threshold"]


async def test_a_stopped_vm_running_on_breaks_intent(cluster: SimCluster) -> None:
    check = checker(cluster)
    await cluster.drivers["n1"].start(await spec(cluster, "x"), 1)
    check.stopped_at["x"] = cluster.now() - START - 60  # stopped a minute ago
    await check.check()
    assert rules(check) == ["intent"]


async def test_a_paused_node_up_without_a_resume_breaks_intent(cluster: SimCluster) -> None:
    check = checker(cluster)
    check.paused.add("n2")  # the administrator paused it; its record still says up
    await check.check()
    assert [v.subject for v in check.violations if v.rule == "intent"] == ["node/n2"]


async def test_a_vm_that_could_run_but_does_not_breaks_recovery() -> None:
    """A 2 s recovery SLO: a VM on a crashed host cannot be back that soon (its host's
    lease and margin must pass first), though the other nodes have room."""
    scenario = parse_scenario({
        "sim": {"duration_s": 15.0, "recovery_slo_s": 2.0},
        "nodes": [{"name": "n1"}, {"name": "n2"}],
        "vms": [{"name": "a", "ha": {"preferred_owners": ["n1"]}}],
        "timeline": [{"at": 3.0, "do": "crash", "node": "n1"}],
    })  # fmt: skip
    assert "recovery" in [v.rule for v in (await run_scenario(scenario)).violations]


async def test_a_node_quarantined_below_the_threshold_breaks_quarantine(
    cluster: SimCluster,
) -> None:
    check = checker(cluster)
    await check.check()
    n2 = await node(cluster, "n2")
    until = cluster.now() + 600
    await put_node(cluster, n2.model_copy(update={
        "admin_state": NodeAdminState.QUARANTINED, "quarantined_until": until}))  # fmt: skip
    await check.check()
    assert [v.detail for v in check.violations] == [
        "quarantined after 0 failure(s) within 3600 s; the threshold is 3"
    ]


async def test_a_quarantine_lifted_early_breaks_quarantine(cluster: SimCluster) -> None:
    check = checker(cluster)
    n2 = await node(cluster, "n2")
    now = cluster.now()
    quarantined = n2.model_copy(update={"admin_state": NodeAdminState.QUARANTINED,
                                        "quarantined_until": now + 600,
                                        "failures": (now - 3, now - 2, now - 1)})  # fmt: skip
    await put_node(cluster, quarantined)
    await check.check()
    assert rules(check) == []  # quarantined at its threshold: right
    await put_node(cluster, quarantined.model_copy(update={"admin_state": NodeAdminState.UP}))
    await check.check()
    assert [v.detail for v in check.violations] == [
        "quarantine lifted 600.0 s before its end, not by the administrator"
    ]


async def test_a_node_due_for_quarantine_and_left_up_breaks_quarantine(tmp_path: Path) -> None:
    """No daemon runs here (none would leave it so): the node's record says it was
    declared dead twice, at a threshold of 2, and it stays up."""
    clock = ManualClock(START, stop_when_idle=True)
    c = SimCluster(tmp_path, FAST, clock)
    config = FAST.model_copy(update={"quarantine": QuarantineSettings(threshold=2)})
    await c.store.put(c.keys.config, encode(ClusterConfig.model_validate(config.model_dump())))
    now = c.now()
    record = {"name": "n1", "address": "n1", "capacity": {"cpus": 4, "memory_mib": 8192},
              "failures": [now - 2, now - 1]}  # fmt: skip
    await c.store.put(c.keys.node("n1"), encode(Node.model_validate(record)))
    check = checker(c)
    steps = round(QUARANTINE_GRACE_S / 0.5) + 2
    for _ in range(steps):
        await check.check()
        await clock.advance(0.5)
    assert [v.rule for v in check.violations] == ["quarantine"]
    assert "not quarantined for" in check.violations[0].detail
    await c.store.close()
