"""Migrations under way in the main plan: a VM being migrated counts on its source until the
flip and on its target from the moment one is named, so placement, recovery and failback
never overcommit a node that is receiving VMs."""

from __future__ import annotations

from hvcluster.models.vm import FailbackMode, FailbackPolicy
from hvcluster.scheduler import Failback as FailbackDecision
from hvcluster.scheduler import LeaveFailed, Place, Recover, plan

from .factory import node, of, one_for, snap, vm

IMMEDIATE = FailbackPolicy(mode=FailbackMode.IMMEDIATE)


def test_a_node_receiving_a_vm_has_that_room_reserved() -> None:
    # n2 is empty but 3 of its 4 vCPUs are on their way to it from n1.
    nodes = [node("n1", cpus=8), node("n2", cpus=4)]
    incoming = vm("big", vcpus=3, memory=512, on="n1", migrating_to="n2")
    d = one_for(plan(snap(nodes, [incoming, vm("new", vcpus=2, preferred=("n2",))])), "new")
    assert isinstance(d, Place) and d.node == "n1", d
    assert "preferred owner" not in d.reason


def test_nothing_fits_while_the_only_free_room_is_reserved() -> None:
    nodes = [node("n1", cpus=2), node("n2", cpus=2)]
    vms = [
        vm("a", vcpus=2, on="n1", migrating_to="n2"),  # counted on n1 and n2
        vm("new", vcpus=1),
    ]
    d = one_for(plan(snap(nodes, vms)), "new")
    assert isinstance(d, LeaveFailed) and d.retry
    assert "n2 has 0 of 2 vCPUs free" in d.reason and "n1 has 0 of 2 vCPUs free" in d.reason


def test_the_source_is_still_counted_until_the_flip() -> None:
    nodes = [node("n1", cpus=2), node("n2", cpus=8)]
    vms = [vm("a", vcpus=2, on="n1", migrating_to="n2"), vm("new", vcpus=1, possible=("n1",))]
    d = one_for(plan(snap(nodes, vms)), "new")
    assert isinstance(d, LeaveFailed) and "n1 has 0 of 2 vCPUs free" in d.reason


def test_recovery_does_not_overcommit_a_receiving_node() -> None:
    # n1 died; its VM needs a home. n2 has room only without the VM migrating to it.
    nodes = [node("n1", alive=False), node("n2", cpus=4), node("n3", cpus=8)]
    vms = [
        vm("victim", vcpus=2, on="n1", preferred=("n2",)),
        vm("incoming", vcpus=3, on="n3", migrating_to="n2"),
    ]
    (d,) = of(plan(snap(nodes, vms)), Recover)
    assert d.vm == "victim" and d.to_node == "n3", d
    assert "n2" not in d.reason.split("chose ")[1].split(":")[0]


def test_a_vm_whose_own_room_is_reserved_is_not_counted_twice_there() -> None:
    # Its source died mid-migration: recovering it onto its reserved target fits exactly.
    nodes = [node("n1", alive=False), node("n2", cpus=2)]
    d = one_for(plan(snap(nodes, [vm("a", vcpus=2, on="n1", migrating_to="n2")])), "a")
    assert isinstance(d, Recover) and d.to_node == "n2", d


def test_a_vm_being_migrated_is_not_failed_back() -> None:
    nodes = [node("n1"), node("n2"), node("n3")]
    away = vm("web", on="n2", preferred=("n1",), failback=IMMEDIATE, migrating=True)
    assert not of(plan(snap(nodes, [away])), FailbackDecision)
    still = vm("web", on="n2", preferred=("n1",), failback=IMMEDIATE)
    assert of(plan(snap(nodes, [still])), FailbackDecision)
