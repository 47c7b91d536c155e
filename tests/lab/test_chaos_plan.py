"""The chaos run's fault plan: reproducible from its seed, only the kinds asked for, and only
faults the cluster must survive (one node or member at a time, always undone)."""

from __future__ import annotations

import pytest

from hvcluster.lab.chaos_plan import KINDS, UNDO, Planner, Timing, parse_kinds

NODES, MEMBERS, VMS = ["n1", "n2", "n3"], ["etcd0", "etcd1", "etcd2"], ["chaos-1", "chaos-2"]


def draw(seed: int, kinds: tuple[str, ...] = KINDS, members: list[str] = MEMBERS) -> list[str]:
    planner = Planner(seed, kinds, NODES, members, VMS, Timing())
    return [planner.next().describe() for _ in range(60)]


def test_the_same_seed_gives_the_same_faults_and_another_seed_others() -> None:
    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_only_the_kinds_asked_for_and_every_one_of_them() -> None:
    planner = Planner(1, ("etcd", "vm"), NODES, MEMBERS, VMS, Timing())
    faults = [planner.next() for _ in range(200)]
    assert {f.kind for f in faults} == {"etcd", "vm"}
    assert {f.action for f in faults} == {"etcd-kill", "etcd-stop", "vm-kill"}
    assert all(f.target in MEMBERS for f in faults if f.kind == "etcd")
    every = Planner(2, KINDS, NODES, MEMBERS, VMS, Timing())
    assert {every.next().kind for _ in range(300)} == set(KINDS)


def test_faults_that_may_not_move_vms_are_short_or_harmless_and_each_is_undone() -> None:
    timing = Timing(lease_ttl_s=4.0, fence_after_s=3.0)
    planner = Planner(3, KINDS, NODES, MEMBERS, VMS, timing)
    for _ in range(500):
        f = planner.next()
        assert f.action in UNDO
        if f.action in ("delay", "partition") and not f.moves and f.source != "nodes":
            assert f.hold_s <= timing.short < timing.fence_after_s
        if f.moves and f.action in ("stop", "partition"):
            assert f.hold_s >= timing.long > timing.lease_ttl_s
        if f.kind == "etcd":
            assert not f.moves  # one member of three: quorum stays


def test_one_etcd_member_is_never_a_target() -> None:
    assert not any("etcd" in f for f in draw(5, ("etcd", "kill"), members=["etcd0"]))


def test_unknown_kinds_are_refused_by_name() -> None:
    assert parse_kinds("kill, vm") == ("kill", "vm")
    for bad in ("kill,explode", ""):
        with pytest.raises(ValueError, match="--faults"):
            parse_kinds(bad)


def test_a_quiet_node_is_drawn_less_often() -> None:
    planner = Planner(4, ("kill",), NODES, MEMBERS, VMS, Timing(), quiet=("n3",))
    targets = [planner.next().target for _ in range(600)]
    assert 0 < targets.count("n3") < targets.count("n1") / 2
