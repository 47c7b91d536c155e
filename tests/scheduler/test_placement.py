"""Placement of new VMs: open nodes, owners, capacity, anti-affinity, spread."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.scheduler import LeaveFailed, Place, plan

from .factory import node, of, one_for, snap, vm


def place_of(decisions: object, name: str) -> str:
    d = one_for(decisions, name)  # type: ignore[arg-type]
    assert isinstance(d, Place), d
    return d.node


def test_new_vm_goes_to_least_loaded_node_with_epoch_1() -> None:
    s = snap(
        [node("n1"), node("n2"), node("n3")],
        [vm("busy1", 4, 4096, on="n1"), vm("busy3", 2, 1024, on="n3"), vm("web")],
    )
    d = one_for(plan(s), "web")
    assert isinstance(d, Place)
    assert (d.node, d.epoch) == ("n2", 1)
    assert "least loaded of 3 nodes that fit" in d.reason


def test_ties_break_on_node_name() -> None:
    s = snap([node("n3"), node("n1"), node("n2")], [vm("web")])
    assert place_of(plan(s), "web") == "n1"


def test_vm_too_big_for_any_node_stays_unplaced_with_reason() -> None:
    s = snap([node("n1", cpus=2), node("n2", memory=1024)], [vm("big", 4, 2048)])
    d = one_for(plan(s), "big")
    assert isinstance(d, LeaveFailed)
    assert d.retry
    assert "no node fits big (4 vCPUs, 2048 MiB)" in d.reason
    assert "n1 has 2 of 2 vCPUs free" in d.reason
    assert "n2 has" in d.reason


def test_capacity_counts_vms_placed_earlier_in_the_same_plan() -> None:
    vms = [vm(f"v{i}", 2, 1024) for i in range(5)]
    d = plan(snap([node("n1", cpus=4), node("n2", cpus=4)], vms))
    placed = of(d, Place)
    assert len(placed) == 4
    assert sorted(p.node for p in placed) == ["n1", "n1", "n2", "n2"]
    failed = of(d, LeaveFailed)
    assert [f.vm for f in failed] == ["v4"]


def test_capacity_counts_vm_still_reported_active_elsewhere() -> None:
    # "mover" is placed on n2 but its agent on n1 still reports it running (a move under
    # way): it holds resources on both nodes.
    mover = vm("mover", 3, 512, on="n2", status_on="n1")
    s = snap([node("n1", cpus=4), node("n2", cpus=8)], [mover, vm("web", 2, 512)])
    assert place_of(plan(s), "web") == "n2"


def test_capacity_reserved_on_the_target_of_a_cold_move() -> None:
    mover = vm("mover", 3, 512, on="n1", moving_to="n2")
    s = snap([node("n1", cpus=8), node("n2", cpus=4)], [mover, vm("web", 2, 512)])
    assert place_of(plan(s), "web") == "n1"


@pytest.mark.parametrize(
    "admin", [NodeAdminState.PAUSED, NodeAdminState.DRAINING, NodeAdminState.QUARANTINED]
)
def test_only_up_nodes_get_new_vms(admin: NodeAdminState) -> None:
    s = snap([node("n1", admin=admin), node("n2", cpus=1)], [vm("a"), vm("b")])
    d = plan(s)
    assert place_of(d, "a") == "n2"
    b = one_for(d, "b")
    assert isinstance(b, LeaveFailed)
    assert f"n1 is {admin.value}" in b.reason


def test_dead_node_gets_nothing() -> None:
    s = snap([node("n1", alive=False), node("n2")], [vm("a")])
    assert place_of(plan(s), "a") == "n2"


def test_possible_owners_respected() -> None:
    s = snap([node("n1"), node("n2"), node("n3")], [vm("a", possible=("n3",))])
    assert place_of(plan(s), "a") == "n3"
    s = snap([node("n1"), node("n2", cpus=1)], [vm("a", 2, possible=("n2",))])
    d = one_for(plan(s), "a")
    assert isinstance(d, LeaveFailed)
    assert "n1 is not a possible owner" in d.reason


def test_first_preferred_owner_that_fits_wins() -> None:
    s = snap(
        [node("n1", cpus=2), node("n2"), node("n3"), node("n4")],
        [vm("filler", 2, on="n1"), vm("a", preferred=("n1", "n3", "n2"))],
    )
    d = one_for(plan(s), "a")
    assert isinstance(d, Place)
    assert d.node == "n3"
    assert "preferred owner #2" in d.reason


def test_hard_anti_affinity_never_shares_a_node() -> None:
    s = snap(
        [node("n1"), node("n2")],
        [
            vm("dc1", on="n1", classes=("dc",), enforced=True),
            vm("dc2", classes=("dc",), enforced=True),
        ],
    )
    assert place_of(plan(s), "dc2") == "n2"


def test_hard_anti_affinity_leaves_vm_failed_when_no_node_fits() -> None:
    s = snap(
        [node("n1"), node("n2")],
        [
            vm("dc1", on="n1", classes=("dc",), enforced=True),
            vm("dc2", on="n2", classes=("dc",), enforced=True),
            vm("dc3", classes=("dc",), enforced=True),
        ],
    )
    d = one_for(plan(s), "dc3")
    assert isinstance(d, LeaveFailed)
    assert "n1 runs dc1 of hard anti-affinity class 'dc'" in d.reason
    assert "n2 runs dc2 of hard anti-affinity class 'dc'" in d.reason


def test_hard_anti_affinity_binds_both_ways() -> None:
    # the resident enforces the class; the newcomer does not: still never together
    s = snap(
        [node("n1"), node("n2", cpus=1)],
        [
            vm("dc1", on="n1", classes=("dc",), enforced=True),
            vm("dc2", on="n2", classes=("dc",)),
            vm("dc3", classes=("dc",)),
        ],
    )
    assert isinstance(one_for(plan(s), "dc3"), LeaveFailed)


def test_hard_anti_affinity_within_one_plan() -> None:
    vms = [vm(f"dc{i}", classes=("dc",), enforced=True) for i in range(3)]
    d = plan(snap([node("n1"), node("n2")], vms))
    assert sorted(p.node for p in of(d, Place)) == ["n1", "n2"]
    assert [f.vm for f in of(d, LeaveFailed)] == ["dc2"]


def test_soft_anti_affinity_preferred_over_load_and_preferred_owner() -> None:
    s = snap(
        [node("n1"), node("n2")],
        [
            vm("dc1", on="n1", classes=("dc",)),
            vm("big", 6, on="n2"),
            vm("dc2", classes=("dc",), preferred=("n1",)),
        ],
    )
    d = one_for(plan(s), "dc2")
    assert isinstance(d, Place)
    assert d.node == "n2"
    assert "no other VM of class 'dc' there" in d.reason


def test_soft_anti_affinity_yields_when_only_conflicting_nodes_fit() -> None:
    s = snap(
        [node("n1"), node("n2", cpus=1)],
        [vm("dc1", on="n1", classes=("dc",)), vm("fill", on="n2"), vm("dc2", classes=("dc",))],
    )
    d = one_for(plan(s), "dc2")
    assert isinstance(d, Place)
    assert d.node == "n1"
    assert "1 other VM(s) of class 'dc' there" in d.reason


def test_stopped_vm_is_not_placed_and_placed_one_is_unplaced() -> None:
    from hvcluster.scheduler import Unplace

    s = snap([node("n1")], [vm("off", desired="stopped"), vm("going", on="n1", desired="stopped")])
    d = plan(s)
    assert [type(x).__name__ for x in d] == ["Unplace"]
    u = of(d, Unplace)[0]
    assert u.vm == "going"
    assert "desired stopped" in u.reason


def test_a_node_lacking_the_vms_switch_or_volume_is_not_eligible() -> None:
    s = snap(
        [
            node("n1", switches=("lan",)),
            node("n2", volumes=("csv1",), switches=("lan",)),
            node("n3", volumes=("csv1",)),
        ],
        [vm("web", on=None, state=None, switches=("lan",), volumes=("csv1",))],
    )
    place = one_for(plan(s), "web")
    assert isinstance(place, Place) and place.node == "n2"
    lonely = snap(
        [node("n1", switches=("lan",)), node("n3", volumes=("csv1",))],
        [vm("web", on=None, state=None, switches=("lan",), volumes=("csv1",))],
    )
    wait = one_for(plan(lonely), "web")
    assert not isinstance(wait, Place)
    assert "n1 lacks volume 'csv1'" in wait.reason
    assert "n3 lacks switch 'lan'" in wait.reason


def test_the_nodes_own_reason_is_given() -> None:
    n1 = node("n1")
    n1 = replace(
        n1, node=n1.node.model_copy(update={"switch_problems": {"lan": "ip: not permitted"}})
    )
    s = snap([n1], [vm("web", on=None, state=None, switches=("lan",))])
    assert "n1 lacks switch 'lan' (ip: not permitted)" in one_for(plan(s), "web").reason
