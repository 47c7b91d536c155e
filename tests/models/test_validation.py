from __future__ import annotations

from typing import Any

import pytest

from hvcluster.models.base import decode, encode, parse
from hvcluster.models.config import ClusterConfig
from hvcluster.models.errors import CorruptValue, InvalidInput
from hvcluster.models.vm import Placement, Priority, VMSpec


def spec(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "web-1", "vcpus": 1, "memory_mib": 128}
    base.update(over)
    return base


@pytest.mark.parametrize("name", ["", "Web", "-a", "a-", "a_b", "a" * 64, "a/b", "a b", "é"])
def test_bad_names_are_refused_naming_the_field(name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse(VMSpec, spec(name=name))
    assert "name" in str(info.value)


@pytest.mark.parametrize("name", ["a", "web-1", "n1", "x" * 63, "0vm"])
def test_good_names(name: str) -> None:
    assert parse(VMSpec, spec(name=name)).name == name


@pytest.mark.parametrize(
    ("field", "value"),
    [("memory_mib", -1), ("memory_mib", 0), ("vcpus", 0), ("vcpus", -2), ("vcpus", 1000)],
)
def test_bad_sizes(field: str, value: int) -> None:
    with pytest.raises(InvalidInput) as info:
        parse(VMSpec, spec(**{field: value}))
    assert field in str(info.value)


def test_unknown_priority() -> None:
    with pytest.raises(InvalidInput) as info:
        parse(VMSpec, spec(ha={"priority": "urgent"}))
    assert "ha.priority" in str(info.value)


def test_unknown_field_is_refused() -> None:
    with pytest.raises(InvalidInput) as info:
        parse(VMSpec, spec(cpus=2))
    assert "cpus" in str(info.value)


def test_contradictory_owners() -> None:
    with pytest.raises(InvalidInput) as info:
        parse(VMSpec, spec(ha={"preferred_owners": ["n3"], "possible_owners": ["n1", "n2"]}))
    assert "preferred_owners" in str(info.value)
    with pytest.raises(InvalidInput, match="twice"):
        parse(VMSpec, spec(ha={"possible_owners": ["n1", "n1"]}))
    ok = parse(VMSpec, spec(ha={"preferred_owners": ["n2"], "possible_owners": ["n1", "n2"]}))
    assert ok.ha.preferred_owners == ("n2",)


def test_bad_mac_and_duplicate_macs() -> None:
    with pytest.raises(InvalidInput, match="MAC"):
        parse(VMSpec, spec(nics=[{"switch": "sw", "mac": "52:54:00:zz:00:01"}]))
    with pytest.raises(InvalidInput, match="multicast"):
        parse(VMSpec, spec(nics=[{"switch": "sw", "mac": "01:54:00:00:00:01"}]))
    nic = {"switch": "sw", "mac": "52:54:00:00:00:01"}
    with pytest.raises(InvalidInput, match="share a MAC"):
        parse(VMSpec, spec(nics=[nic, nic]))


def test_disk_paths() -> None:
    with pytest.raises(InvalidInput, match="absolute"):
        parse(VMSpec, spec(disks=[{"path": "rel.qcow2"}]))
    with pytest.raises(InvalidInput, match=r"\.\."):
        parse(VMSpec, spec(disks=[{"path": "../x.qcow2", "volume": "v1"}]))
    vm = parse(VMSpec, spec(disks=[{"path": "a/x.qcow2", "volume": "v1"}]))
    assert vm.disks[0].volume == "v1"


def test_defaults_and_priority_rank() -> None:
    vm = parse(VMSpec, spec())
    assert vm.ha.priority is Priority.MEDIUM
    assert Priority.HIGH.rank < Priority.MEDIUM.rank < Priority.LOW.rank


def test_cluster_config_defaults_and_contradictions() -> None:
    c = ClusterConfig()
    assert (c.lease_ttl_s, c.keepalive_interval_s, c.fence_after_s) == (4.0, 0.5, 3.0)
    with pytest.raises(InvalidInput, match="fence_after_s"):
        parse(ClusterConfig, {"fence_after_s": 5.0})
    with pytest.raises(InvalidInput, match="keepalive_interval_s"):
        parse(ClusterConfig, {"keepalive_interval_s": 3.5})


def test_migration_settings_name_the_field() -> None:
    with pytest.raises(InvalidInput, match=r"migration\.postcopy_after_passes"):
        parse(ClusterConfig, {"migration": {"postcopy": True, "postcopy_after_passes": 0}})
    with pytest.raises(InvalidInput, match="postcopy and multifd"):
        parse(ClusterConfig, {"migration": {"postcopy": True, "multifd": True}})
    c = parse(ClusterConfig, {"migration": {"postcopy": True, "postcopy_after_passes": 3}})
    assert c.migration.postcopy_after_passes == 3


def test_corrupt_stored_value_names_the_key() -> None:
    with pytest.raises(CorruptValue) as info:
        decode(Placement, "/hvc/x/placements/a", b"{not json")
    assert "/hvc/x/placements/a" in str(info.value)
    with pytest.raises(CorruptValue, match="epoch"):
        decode(Placement, "/hvc/x/placements/a", b'{"node": "n1", "epoch": -3}')
    with pytest.raises(CorruptValue):
        decode(Placement, "k", b"\xff\xfe")


def test_round_trip() -> None:
    vm = parse(VMSpec, spec(nics=[{"switch": "sw", "mac": "52:54:00:AA:00:01"}]))
    assert vm.nics[0].mac == "52:54:00:aa:00:01"
    assert decode(VMSpec, "k", encode(vm)) == vm
