"""Failback to a more preferred owner: never, immediately, or in a window (UTC hours)."""

from __future__ import annotations

import pytest

from hvcluster.models.vm import FailbackMode, FailbackPolicy
from hvcluster.scheduler import Decision, NodeView, VMView, Wait, plan
from hvcluster.scheduler import Failback as FailbackDecision
from hvcluster.scheduler.timefmt import in_hour_window, next_hour_start

from .factory import at, node, snap, vm

IMMEDIATE = FailbackPolicy(mode=FailbackMode.IMMEDIATE)


def window(start: int, end: int) -> FailbackPolicy:
    return FailbackPolicy(mode=FailbackMode.WINDOW, window_start_hour=start, window_end_hour=end)


def web(fb: FailbackPolicy | None, on: str = "n2") -> VMView:
    return vm("web", on=on, preferred=("n1", "n2"), failback=fb)


def run(
    fb: FailbackPolicy | None, now: float, nodes: list[NodeView] | None = None, on: str = "n2"
) -> tuple[Decision, ...]:
    nodes = nodes or [node("n1"), node("n2"), node("n3")]
    return plan(snap(nodes, [web(fb, on=on)], now=now))


def test_never_by_default() -> None:
    assert run(None, at(12)) == ()


def test_immediate_moves_back_to_first_preferred_owner() -> None:
    (d,) = run(IMMEDIATE, at(12))
    assert isinstance(d, FailbackDecision)
    assert (d.vm, d.from_node, d.to_node) == ("web", "n2", "n1")
    assert "preferred owner #2" in d.reason and "failback is immediate" in d.reason


def test_from_a_non_preferred_node_to_the_best_preferred_that_fits() -> None:
    nodes = [node("n1", alive=False), node("n2"), node("n3")]
    (d,) = (x for x in run(IMMEDIATE, at(12), nodes, on="n3") if isinstance(x, FailbackDecision))
    assert d.to_node == "n2"
    assert "not a preferred owner" in d.reason


def test_no_failback_when_already_on_first_preferred() -> None:
    assert run(IMMEDIATE, at(12), on="n1") == ()


@pytest.mark.parametrize(
    ("why", "n1"),
    [
        ("dead", node("n1", alive=False)),
        (
            "paused",
            node("n1", admin=__import__("hvcluster").models.lifecycle.NodeAdminState.PAUSED),
        ),
        ("full", node("n1", cpus=1)),
    ],
)
def test_no_failback_to_a_node_that_cannot_take_it(why: str, n1: NodeView) -> None:
    nodes = [n1, node("n2")]
    blocker = vm("blocker", on="n1")
    d = plan(snap(nodes, [web(IMMEDIATE), blocker], now=at(12)))
    assert not [x for x in d if isinstance(x, FailbackDecision)], why


def test_no_failback_onto_hard_anti_affinity() -> None:
    nodes = [node("n1"), node("n2")]
    vms = [
        vm("dc1", on="n1", classes=("dc",), enforced=True),
        vm("dc2", on="n2", classes=("dc",), enforced=True, preferred=("n1",), failback=IMMEDIATE),
    ]
    assert plan(snap(nodes, vms, now=at(12))) == ()


def test_no_failback_onto_more_soft_conflicts() -> None:
    nodes = [node("n1"), node("n2")]
    vms = [
        vm("dc1", on="n1", classes=("dc",)),
        vm("dc2", on="n2", classes=("dc",), preferred=("n1",), failback=IMMEDIATE),
    ]
    assert plan(snap(nodes, vms, now=at(12))) == ()


def test_only_running_vms_fail_back() -> None:
    from hvcluster.models.lifecycle import VMState

    v = vm("web", on="n2", preferred=("n1",), failback=IMMEDIATE, state=VMState.MIGRATING)
    assert plan(snap([node("n1"), node("n2")], [v], now=at(12))) == ()


def test_no_second_failback_while_a_move_is_under_way() -> None:
    v = vm("web", on="n2", preferred=("n1",), failback=IMMEDIATE, moving_to="n1")
    assert plan(snap([node("n1"), node("n2")], [v], now=at(12))) == ()


def test_failbacks_count_capacity() -> None:
    nodes = [node("n1", cpus=2), node("n2")]
    vms = [vm(f"v{i}", on="n2", preferred=("n1",), failback=IMMEDIATE) for i in range(3)]
    d = plan(snap(nodes, vms, now=at(12)))
    assert [x.vm for x in d if isinstance(x, FailbackDecision)] == ["v0", "v1"]


def test_window_open() -> None:
    (d,) = run(window(1, 5), at(3))
    assert isinstance(d, FailbackDecision)
    assert "failback window 01:00-05:00 UTC is open" in d.reason


def test_window_closed_waits_until_it_opens() -> None:
    (d,) = run(window(1, 5), at(5))
    assert isinstance(d, Wait)
    assert d.subject == "vm/web"
    assert d.until == at(1) + 86400  # the next day's 01:00
    assert "opens at 01:00:00.0" in d.reason


@pytest.mark.parametrize(
    ("hour", "minute", "inside"),
    [(21, 59, False), (22, 0, True), (23, 30, True), (0, 0, True), (1, 59, True), (2, 0, False)],
)
def test_window_crossing_midnight(hour: int, minute: int, inside: bool) -> None:
    (d,) = run(window(22, 2), at(hour, minute))
    assert isinstance(d, FailbackDecision) == inside
    if not inside:
        assert isinstance(d, Wait)
        assert d.until is not None and 0 < d.until - at(hour, minute) <= 86400


def test_window_helpers() -> None:
    assert in_hour_window(at(23), 22, 2)
    assert not in_hour_window(at(12), 22, 2)
    assert in_hour_window(at(12), 9, 17)
    assert not in_hour_window(at(17), 9, 17)
    assert next_hour_start(at(12, 30), 22) == at(22)
    assert next_hour_start(at(22), 22) == at(22)
    assert next_hour_start(at(23), 22) == at(22) + 86400


def held_node(name: str, held: dict[str, int]) -> NodeView:
    """A node resumed with ``failback none`` while the VMs in ``held`` were away."""
    plain = node(name)
    return NodeView(plain.node.model_copy(update={"failback_held": held}), alive=True)


def test_a_node_resumed_with_failback_none_holds_back_vms_away_at_that_epoch() -> None:
    nodes = [held_node("n1", {"web": 1}), node("n2"), node("n3")]
    (d,) = run(IMMEDIATE, at(12), nodes)
    assert isinstance(d, Wait) and d.subject == "vm/web" and d.until is None
    assert "n1 (preferred owner #1) was resumed with failback none" in d.reason
    assert "its own failback policy, immediate, would" in d.reason


def test_the_hold_ends_when_the_vm_has_moved_since() -> None:
    nodes = [held_node("n1", {"web": 1}), node("n2"), node("n3")]
    moved = vm("web", on="n2", epoch=2, preferred=("n1", "n2"), failback=IMMEDIATE)
    (d,) = plan(snap(nodes, [moved], now=at(12)))
    assert isinstance(d, FailbackDecision) and d.to_node == "n1"


def test_a_hold_on_one_node_leaves_failback_to_another_preferred_owner() -> None:
    nodes = [held_node("n1", {"web": 1}), node("n2"), node("n3")]
    away = vm("web", on="n3", preferred=("n1", "n2", "n3"), failback=IMMEDIATE)
    (d,) = plan(snap(nodes, [away], now=at(12)))
    assert isinstance(d, FailbackDecision) and d.to_node == "n2"


def test_a_hold_is_silent_when_the_vm_would_not_fail_back_anyway() -> None:
    nodes = [held_node("n1", {"web": 1}), node("n2"), node("n3")]
    assert run(None, at(12), nodes) == ()  # failback never: nothing to hold back
