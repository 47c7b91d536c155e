"""Admission control: node failures the running HA VMs survive, and admitting one more."""

from __future__ import annotations

from typing import Any

from hvcluster.models.admission import admit, survival
from hvcluster.models.node import Capacity, Node
from hvcluster.models.vm import VMSpec


def _node(name: str, memory: int = 4096) -> Node:
    return Node(name=name, address="10.0.0.1", capacity=Capacity(cpus=8, memory_mib=memory))


def _vm(name: str, memory: int = 1024, **ha: Any) -> VMSpec:
    return VMSpec.model_validate(
        {"name": name, "vcpus": 1, "memory_mib": memory, "desired_state": "running", "ha": ha}
    )


NODES = [_node("n1"), _node("n2"), _node("n3")]


def test_three_half_full_nodes_survive_one_failure_not_two() -> None:
    placed = {n.name: [_vm(f"{n.name}-a", 2048)] for n in NODES}
    found = survival(NODES, placed)
    assert (found.survived, found.nodes, found.ha_vms) == (1, 3, 3)
    assert found.why_not_more.startswith("should n1, n2 fail,")
    assert "fits on no node left" in found.why_not_more


def test_vms_that_are_not_ha_need_no_room() -> None:
    placed = {
        "n1": [_vm("a", 4096, priority="no_auto_start")],
        "n2": [_vm("b", 4096, priority="no_auto_start")],
    }
    assert survival(NODES[:2], placed).survived == 1  # all but one node may fail


def test_owners_and_hard_anti_affinity_count() -> None:
    placed = {"n1": [_vm("db", 512, possible_owners=["n1"])]}
    found = survival(NODES, placed)
    assert found.survived == 0 and "not a possible owner of db" in found.why_not_more
    dcs = {
        n.name: [_vm(f"dc-{n.name}", 512, anti_affinity_classes=["dc"],
                     anti_affinity_enforced=True)]
        for n in NODES
    }  # fmt: skip
    assert survival(NODES, dcs).survived == 0
    assert "hard anti-affinity" in survival(NODES, dcs).why_not_more


def test_counting_stops_at_the_limit() -> None:
    found = survival(NODES, {}, limit=1)
    assert found.survived == 1 and found.at_least


def test_admit_refuses_the_vm_that_breaks_the_setting_with_why() -> None:
    placed = {"n1": [_vm("a", 1536)], "n2": [_vm("b", 1536)]}
    nodes = NODES[:2]
    assert admit(_vm("small", 512), nodes, placed, 1) is None
    why = admit(_vm("big", 1200), nodes, placed, 1)
    assert why is not None
    assert "with big the running HA VMs survive 0 node failure(s)" in why
    assert "(admission.node_failures_tolerated; without it they survive 1)" in why
    assert admit(_vm("big", 1200), nodes, placed, 0) is None  # 0: no admission control
    assert admit(_vm("big", 1200, priority="no_auto_start"), nodes, placed, 1) is None
