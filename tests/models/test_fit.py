"""The one fitting rule (models/fit.py): every reason a node cannot run, or take by a move,
a VM, worded as a person reads it; and the order they are given in when several hold."""

from __future__ import annotations

from typing import Any

from hvcluster.models.fit import (
    Target,
    cannot_move,
    conflicts,
    hard_conflict,
    lacks,
    misfit,
    no_room,
    not_owner,
    not_up,
    resident,
    why_not_move,
)
from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.models.migration import MigrationKind
from hvcluster.models.node import Capacity, Inventory, Node
from hvcluster.models.vm import VMSpec

LIVE, QUICK = MigrationKind.LIVE, MigrationKind.QUICK


def node(name: str, **update: Any) -> Node:
    base = Node(
        name=name,
        address="127.0.0.1",
        capacity=Capacity(cpus=4, memory_mib=4096),
        switches=("lan",),
        volumes=("csv",),
        inventory=Inventory(driver="qemu", accelerator="kvm", guest_cpu_model="qemu64"),
    )
    return base.model_copy(update=update)


def vm(name: str = "web", **fields: Any) -> VMSpec:
    return VMSpec.model_validate({"name": name, "vcpus": 2, "memory_mib": 1024, **fields})


def test_admin_state_keeps_a_node_from_taking_vms_with_its_reason() -> None:
    assert not_up(node("n1")) is None
    assert not_up(node("n1", admin_state=NodeAdminState.PAUSED)) == "n1 is paused"
    draining = node("n1", admin_state=NodeAdminState.DRAINING, admin_reason="new disks")
    assert not_up(draining) == "n1 is draining: new disks"


def test_possible_owners_when_listed() -> None:
    assert not_owner(vm(), "n2") is None  # none listed: any node
    pinned = vm(ha={"possible_owners": ["n1"]})
    assert not_owner(pinned, "n1") is None
    assert not_owner(pinned, "n2") == "n2 is not a possible owner of web"


def test_missing_switches_and_volumes_are_named_with_the_nodes_reason() -> None:
    spec = vm(
        nics=[{"switch": "dmz", "mac": "52:54:00:00:00:01"}],
        disks=[{"volume": "fast", "path": "web.qcow2"}],
    )
    assert lacks(spec, node("n1", switches=("dmz",), volumes=("fast",))) is None
    bare = node("n2", switch_problems={"dmz": "uplink eth1 is not present"})
    assert lacks(spec, bare) == (
        "n2 lacks switch 'dmz' (uplink eth1 is not present) and volume 'fast'"
    )


def test_the_cpu_model_a_spec_names_must_be_provided() -> None:
    spec = vm(cpu_model="EPYC")
    assert lacks(spec, node("n1")) == (
        "web names CPU model EPYC not available on n1: it provides qemu64"
    )
    epyc = Inventory(driver="qemu", guest_cpu_model="qemu64", guest_cpu_models=("qemu64", "EPYC"))
    assert lacks(spec, node("n1", inventory=epyc)) is None


def test_capacity_counts_what_is_in_use_and_never_overcommits() -> None:
    spec = vm()  # 2 vCPUs, 1024 MiB; the node has 4 and 4096
    assert no_room(spec, node("n1"), 2, 3072) is None  # exactly full is a fit
    assert no_room(spec, node("n1"), 3, 0) == "n1 has 1 of 4 vCPUs free"
    assert no_room(spec, node("n1"), 0, 3584) == "n1 has 512 of 4096 MiB free"
    assert no_room(spec, node("n1"), 0, 5000) == "n1 has 0 of 4096 MiB free"  # never negative


def test_hard_anti_affinity_when_either_vm_enforces_it() -> None:
    dc1 = vm("dc1", ha={"anti_affinity_classes": ["dc"], "anti_affinity_enforced": True})
    dc2 = vm("dc2", ha={"anti_affinity_classes": ["dc"]})
    assert hard_conflict(dc2, "n1", [resident(dc1)]) == (
        "n1 runs dc1 of hard anti-affinity class 'dc'"
    )
    assert hard_conflict(dc1, "n1", [resident(dc2)]) is not None
    assert hard_conflict(dc1, "n1", [resident(dc1)]) is None  # itself: no conflict
    dc3 = vm("dc3", ha={"anti_affinity_classes": ["dc"]})
    assert hard_conflict(dc2, "n1", [resident(dc3)]) is None  # neither enforces: soft
    assert conflicts(dc2, [resident(dc3)]).soft == 1


def test_misfit_gives_the_first_reason_in_order() -> None:
    spec = vm("dc2", nics=[{"switch": "dmz", "mac": "52:54:00:00:00:01"}], vcpus=8)
    dc1 = vm("dc1", ha={"anti_affinity_classes": ["dc"], "anti_affinity_enforced": True})
    assert misfit(spec, node("n1"), 0, 0, []) == "n1 lacks switch 'dmz'"
    spec = spec.model_copy(update={"nics": ()})
    assert misfit(spec, node("n1"), 0, 0, []) == "n1 has 4 of 4 vCPUs free"
    spec = vm("dc2", ha={"anti_affinity_classes": ["dc"]})
    assert misfit(spec, node("n1"), 0, 0, [resident(dc1)]) is not None
    assert misfit(spec, node("n1"), 0, 0, []) is None


def test_a_running_guest_moves_only_where_it_can_be_carried_over() -> None:
    spec = vm()
    a, b = node("a"), node("b")
    assert cannot_move(spec, "qemu64", a, b, LIVE) is None
    sim = node("b", inventory=Inventory(driver="sim", guest_cpu_model="qemu64"))
    assert "no live migration between them, cold move only" in str(
        cannot_move(spec, "qemu64", a, sim, LIVE)
    )
    tcg = node("b", inventory=Inventory(driver="qemu", accelerator="tcg"))
    assert "(use quick migration)" in str(cannot_move(spec, "qemu64", a, tcg, LIVE))
    assert "model EPYC not available on b" in str(cannot_move(spec, "EPYC", a, b, LIVE))
    apart = node("b", volumes=("other",))
    assert cannot_move(spec, "qemu64", a, apart, LIVE) is None  # live: no state saved
    assert cannot_move(spec, "qemu64", a, apart, QUICK) == (
        "a and b share no volume to save the VM's state on: no quick migration between them"
    )


def test_why_not_move_every_reason_in_order() -> None:
    spec, src = vm(), node("n1")

    def why(target: Target, kind: MigrationKind = LIVE, source: Node | None = src) -> Any:
        return why_not_move(spec, "qemu64", source, target, kind)

    assert why(Target("n2", node("n2"), True)) is None
    assert why(Target("ghost", None, True)) == "node 'ghost' not found"
    assert why(Target("n1", src, True)) == "web already runs on n1"
    assert why(Target("n2", node("n2"), False)) == "n2 is not alive"
    paused = node("n2", admin_state=NodeAdminState.PAUSED)
    assert why(Target("n2", paused, True)) == "n2 is paused"
    pinned = spec.model_copy(update={"ha": spec.ha.model_copy(update={"possible_owners": ("n1",)})})
    assert why_not_move(pinned, "qemu64", src, Target("n2", node("n2"), True)) == (
        "n2 is not a possible owner of web"
    )
    apart = node("n2", volumes=("other",))
    assert "share no volume" in why(Target("n2", apart, True), QUICK)
    assert why(Target("n2", apart, True), QUICK, source=None) is None  # unknown source
    assert why(Target("n2", node("n2", switches=()), True)) is None  # web has no NIC
    full = Target("n2", node("n2"), True, used_cpus=3)
    assert why(full) == "n2 has 1 of 4 vCPUs free"
    mate = vm("dc1", ha={"anti_affinity_classes": ["x"], "anti_affinity_enforced": True})
    spec = vm(ha={"anti_affinity_classes": ["x"]})
    assert why_not_move(
        spec, "qemu64", src, Target("n2", node("n2"), True, residents=(resident(mate),))
    ) == ("n2 runs dc1 of hard anti-affinity class 'x'")
