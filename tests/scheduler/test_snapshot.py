"""The snapshot: frozen, sorted, checked; the epoch rule."""

from __future__ import annotations

import dataclasses

import pytest

from hvcluster.models.errors import InvalidInput
from hvcluster.scheduler import ClusterSnapshot, plan

from .factory import CONFIG, NOW, node, vm


def test_keys_must_match_names() -> None:
    with pytest.raises(InvalidInput, match="nodes: key 'n2' holds node 'n1'"):
        ClusterSnapshot(now=NOW, config=CONFIG, nodes={"n2": node("n1")})
    with pytest.raises(InvalidInput, match="vms: key 'b' holds vm 'a'"):
        ClusterSnapshot(now=NOW, config=CONFIG, vms={"b": vm("a")})


def test_mappings_are_read_only_and_sorted() -> None:
    s = ClusterSnapshot(now=NOW, config=CONFIG, nodes={"n2": node("n2"), "n1": node("n1")})
    assert list(s.nodes) == ["n1", "n2"]
    with pytest.raises(TypeError):
        s.nodes["n3"] = node("n3")  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.now = 0  # type: ignore[misc]


def test_build_order_does_not_matter() -> None:
    nodes = [node(f"n{i}", cpus=2) for i in range(4)]
    vms = [vm(f"v{i}", on="n0" if i % 3 == 0 else None) for i in range(8)]
    a = ClusterSnapshot(NOW, CONFIG, {n.name: n for n in nodes}, {v.name: v for v in vms})
    b = ClusterSnapshot(
        NOW, CONFIG, {n.name: n for n in reversed(nodes)}, {v.name: v for v in reversed(vms)}
    )
    assert a == b
    assert plan(a) == plan(b)


def test_next_epoch_is_above_everything_seen() -> None:
    assert vm("a").next_epoch == 1
    assert vm("a", on="n1", epoch=4).next_epoch == 5
    assert vm("a", on="n1", epoch=4, status_epoch=6).next_epoch == 7
    assert dataclasses.replace(vm("a"), epoch_floor=3).next_epoch == 4
