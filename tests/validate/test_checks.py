"""The pure checks of ``hvc cluster validate``: facts in, pass / warn / fail out."""

from __future__ import annotations

from typing import Any

from hvcluster.models.node import Capacity, Inventory, Node
from hvcluster.models.storage import Switch, Volume
from hvcluster.models.validation import (
    Category,
    Check,
    CheckStatus,
    ClockOffset,
    EtcdFacts,
    EtcdMemberFacts,
    Probe,
    ValidationFacts,
)
from hvcluster.validate import Thresholds, validate

FLAGS = ("fpu", "sse2", "vmx")


def node(name: str, **over: Any) -> Node:
    inv = Inventory(
        host_cpu="Xeon", cpu_flags=FLAGS, accelerator="tcg", qemu_version="7.2.22", driver="qemu"
    )
    fields: dict[str, Any] = {
        "name": name,
        "address": "127.0.0.1",
        "capacity": Capacity(cpus=2, memory_mib=4096),
        "inventory": inv,
    }
    fields.update(over)
    return Node(**fields)


def etcd_ok() -> EtcdFacts:
    members = tuple(
        EtcdMemberFacts(
            name=f"e{i}", reachable=True, is_leader=i == 1, latency_ms=2.0, db_size=1 << 20
        )
        for i in (1, 2, 3)
    )
    return EtcdFacts(members=members, leader="e1", has_quorum=True)


def facts(*nodes: Node, **over: Any) -> ValidationFacts:
    fields: dict[str, Any] = {
        "cluster": "t",
        "served_by": nodes[0].name if nodes else "n1",
        "time": 1000.0,
        "nodes": nodes,
        "alive": frozenset(n.name for n in nodes),
        "etcd": etcd_ok(),
    }
    fields.update(over)
    return ValidationFacts(**fields)


def by_name(f: ValidationFacts, thresholds: Thresholds = Thresholds()) -> dict[str, Check]:
    return {c.name: c for c in validate(f, thresholds).checks}


def test_a_healthy_cluster_passes_everything() -> None:
    a, b = (
        node("n1", switches=("lan",), volumes=("csv",), volume_free_mib={"csv": 50_000}),
        node("n2", switches=("lan",), volumes=("csv",), volume_free_mib={"csv": 50_000}),
    )
    probes = (
        Probe(source="n1", target="n2", address="127.0.0.1:2", reachable=True, latency_ms=0.3),
        Probe(source="n2", target="n1", address="127.0.0.1:1", reachable=True, latency_ms=0.4),
    )
    report = validate(
        facts(
            a,
            b,
            volumes=(Volume(name="csv", path="/srv/csv", id="abc"),),
            switches=(Switch(name="lan"),),
            probes=probes,
            clocks=(ClockOffset(node="n2", offset_s=0.01, uncertainty_s=0.001),),
        )
    )
    bad = [c for c in report.checks if c.status is not CheckStatus.PASS]
    assert bad == []
    assert not report.failed
    assert {c.category for c in report.checks} == set(Category)
    assert "live migration n1 <-> n2" in {c.name for c in report.checks}


def test_missing_volume_and_bridge_fail_naming_the_node() -> None:
    a = node("n1", switches=("lan",), volumes=("csv",))
    b = node(
        "n2",
        volume_problems={"csv": "marker holds id zzz"},
        switch_problems={"lan": "not root"},
    )
    checks = by_name(
        facts(
            a,
            b,
            volumes=(Volume(name="csv", path="/srv/csv", id="abc"),),
            switches=(Switch(name="lan"),),
        )
    )
    vol, sw = checks["volume csv"], checks["switch lan"]
    assert vol.status is CheckStatus.FAIL and vol.nodes == ("n2",)
    assert "not seen by n2 (marker holds id zzz)" in vol.message and "abc" in vol.action
    assert sw.status is CheckStatus.FAIL and sw.nodes == ("n2",)
    assert "hvc-lan" in sw.message and "missing on n2 (not root)" in sw.message


def test_a_dead_node_is_reported_and_left_out() -> None:
    a, b = node("n1", volumes=("csv",)), node("n2")
    checks = by_name(
        facts(a, b, alive=frozenset({"n1"}), volumes=(Volume(name="csv", path="/v", id="x"),))
    )
    assert checks["node n2"].status is CheckStatus.WARN
    assert checks["volume csv"].status is CheckStatus.PASS  # n2 is not asked to see it
    assert not any(name.startswith("live migration") for name in checks)


def test_cpu_compatibility_between_each_pair() -> None:
    same = node("n1")
    other_flags = node("n2", inventory=same.inventory.model_copy(update={"cpu_flags": ("fpu",)}))
    kvm = node("n3", inventory=same.inventory.model_copy(update={"accelerator": "kvm"}))
    sim = node("n4", inventory=Inventory(host_cpu="sim-cpu", accelerator="tcg", driver="sim"))
    checks = by_name(facts(same, other_flags, kvm, sim))
    flags = checks["live migration n1 <-> n2"]
    assert flags.status is CheckStatus.WARN and "only n1 has sse2, vmx" in flags.message
    assert checks["live migration n1 <-> n3"].status is CheckStatus.FAIL
    assert "kvm" in checks["live migration n1 <-> n3"].message
    assert checks["live migration n1 <-> n4"].status is CheckStatus.FAIL
    assert checks["accelerator"].status is CheckStatus.WARN
    # six pairs among four nodes
    assert sum(1 for n in checks if n.startswith("live migration")) == 6


def guests(name: str, model: str, *provides: str) -> Node:
    """A qemu node whose guests get ``model`` by default, providing ``provides`` too."""
    update: dict[str, Any] = {"guest_cpu_model": model}
    if provides:
        update["guest_cpu_models"] = (model, *provides)
    return node(name, inventory=node(name).inventory.model_copy(update=update))


def test_cpu_models_are_checked_per_ordered_pair() -> None:
    a = guests("n1", "qemu64")  # provides its own model only
    b = guests("n2", "Skylake-Server", "qemu64")
    old = node("n3")  # reports no guest CPU: a qemu agent gave qemu64 then
    checks = by_name(facts(a, b, old))
    assert checks["live migration n1 <-> n2"].status is CheckStatus.PASS  # driver, accel, flags
    ok = checks["CPU models n1 -> n2"]
    assert ok.status is CheckStatus.PASS and "n2 can provide every CPU model" in ok.message
    bad = checks["CPU models n2 -> n1"]
    assert bad.status is CheckStatus.FAIL and bad.nodes == ("n2", "n1")
    assert bad.message == (
        "live and quick migration impossible from n2 to n1 (model Skylake-Server not "
        "available on n1): cold move only"
    )
    assert "make n1 provide Skylake-Server (it provides qemu64)" in bad.action
    assert "cpu_model" in bad.action and "cold" in bad.action
    assert checks["CPU models n1 -> n3"].status is CheckStatus.PASS
    assert checks["CPU models n3 -> n2"].status is CheckStatus.PASS
    assert "guest CPU Skylake-Server" in checks["node n2"].message
    # six ordered pairs among three nodes
    assert sum(1 for n in checks if n.startswith("CPU models")) == 6


def test_the_models_running_vms_use_count_too() -> None:
    a = guests("n1", "qemu64", "Haswell")
    b = guests("n2", "qemu64")
    plain = by_name(facts(a, b))
    assert plain["CPU models n1 -> n2"].status is CheckStatus.PASS  # only its default
    running = {"n1": {"web": "Haswell", "db": "", "app": "qemu64"}}
    checks = by_name(facts(a, b, guest_cpus=running))
    pair = checks["CPU models n1 -> n2"]
    assert pair.status is CheckStatus.FAIL
    assert "(model Haswell not available on n2): cold move only; n1 runs web with it" in (
        pair.message
    )
    assert checks["CPU models n2 -> n1"].status is CheckStatus.PASS


def test_a_host_that_cannot_provide_its_guest_cpu_fails() -> None:
    base = node("n1").inventory
    lacks = base.model_copy(
        update={"guest_cpu_model": "EPYC", "guest_cpu_problem": "this host lacks sha-ni"}
    )
    ok = base.model_copy(update={"guest_cpu_model": "EPYC"})
    checks = by_name(facts(node("n1", inventory=ok), node("n2", inventory=lacks)))
    own = checks["node n2"]
    assert own.status is CheckStatus.FAIL and "cannot give guests CPU EPYC" in own.message
    assert "this host lacks sha-ni" in own.message
    pair = checks["CPU models n1 -> n2"]
    assert pair.status is CheckStatus.FAIL
    assert "model EPYC not available on n2" in pair.message


def test_qemu_versions_that_differ_warn() -> None:
    old = node("n2", inventory=node("x").inventory.model_copy(update={"qemu_version": "6.2"}))
    check = by_name(facts(node("n1"), old))["qemu versions"]
    assert check.status is CheckStatus.WARN and "6.2 on n2" in check.message


def test_unreachable_agent_fails_with_both_nodes() -> None:
    probes = (
        Probe(source="n1", target="n2", address="10.0.0.2:8440", reachable=False, error="refused"),
        Probe(source="n2", target="n1", address="x", reachable=False, asked=False, error="timeout"),
    )
    checks = by_name(facts(node("n1"), node("n2"), probes=probes))
    down = checks["agent api n1 -> n2"]
    assert down.status is CheckStatus.FAIL and down.nodes == ("n1", "n2")
    assert "10.0.0.2:8440" in down.message and "refused" in down.message
    assert checks["agent api n2 -> n1"].status is CheckStatus.WARN


def test_clock_skew_thresholds_allow_for_the_round_trip() -> None:
    clocks = (
        ClockOffset(node="a", offset_s=0.1),
        ClockOffset(node="b", offset_s=-0.9),
        ClockOffset(node="c", offset_s=3.0),
        ClockOffset(node="d", offset_s=2.4, uncertainty_s=0.5),  # at least 1.9 s: only a warning
        ClockOffset(node="e", error="connection refused"),
    )
    checks = by_name(facts(node("n1"), clocks=clocks))
    status = {n: checks[f"clock {n}"].status for n in "abcde"}
    assert status == {
        "a": CheckStatus.PASS,
        "b": CheckStatus.WARN,
        "c": CheckStatus.FAIL,
        "d": CheckStatus.WARN,
        "e": CheckStatus.WARN,
    }
    assert checks["clock c"].nodes == ("c",)


def test_low_free_space_warns() -> None:
    a = node("n1", volumes=("csv",), volume_free_mib={"csv": 300})
    check = by_name(facts(a, volumes=(Volume(name="csv", path="/v", id="x"),)))["free space csv"]
    assert check.status is CheckStatus.WARN and check.nodes == ("n1",)
    assert "300 MiB" in check.message


def test_etcd_without_quorum_fails_and_a_lost_member_warns() -> None:
    members = etcd_ok().members
    lost_one = EtcdFacts(
        members=(members[0], members[1], members[2].model_copy(update={"reachable": False})),
        leader="e1",
        has_quorum=True,
    )
    assert by_name(facts(node("n1"), etcd=lost_one))["members"].status is CheckStatus.WARN
    no_quorum = EtcdFacts(
        members=(members[0], *(m.model_copy(update={"reachable": False}) for m in members[1:])),
        leader=None,
        has_quorum=False,
    )
    checks = by_name(facts(node("n1"), etcd=no_quorum))
    assert checks["members"].status is CheckStatus.FAIL
    assert checks["leader"].status is CheckStatus.FAIL
    broken = by_name(facts(node("n1"), etcd=EtcdFacts(error="connection refused")))
    assert broken["health"].status is CheckStatus.FAIL


def test_etcd_single_member_slow_and_large() -> None:
    big = EtcdMemberFacts(
        name="e1", reachable=True, is_leader=True, latency_ms=250.0, db_size=2 * 1024**3
    )
    checks = by_name(
        facts(node("n1"), etcd=EtcdFacts(members=(big,), leader="e1", has_quorum=True))
    )
    assert checks["member count"].status is CheckStatus.WARN
    assert checks["latency"].status is CheckStatus.WARN
    assert checks["db size"].status is CheckStatus.FAIL


def test_no_nodes_fails() -> None:
    report = validate(facts())
    assert report.failed and report.checks[0].name == "nodes"


def test_migration_port_probes_pass_fail_or_are_unknown() -> None:
    def port(source: str, target: str, **over: Any) -> Probe:
        fields: dict[str, Any] = {
            "source": source,
            "target": target,
            "address": "127.0.0.1:40001",
            "reachable": True,
            "latency_ms": 0.2,
            "kind": "migration",
        }
        return Probe(**{**fields, **over})

    probes = (
        port("n1", "n2"),
        port("n2", "n1", reachable=False, latency_ms=None, error="no answer in 2 s"),
        port(
            "n1",
            "n3",
            address="10.0.0.3",
            reachable=False,
            error="n3 could not open a listener on its migration address: cannot listen on "
            "10.0.0.3: cannot assign requested address",
        ),
        port("n3", "n1", reachable=False, asked=False, error="timeout"),
    )
    checks = by_name(facts(node("n1"), node("n2"), node("n3"), probes=probes))
    assert checks["migration port n1 -> n2"].status is CheckStatus.PASS
    blocked = checks["migration port n2 -> n1"]
    assert blocked.status is CheckStatus.FAIL and blocked.nodes == ("n2", "n1")
    assert "live migrations from n2 to n1 will fail" in blocked.action
    unbound = checks["migration port n1 -> n3"]
    assert (
        unbound.status is CheckStatus.FAIL and "cannot assign requested address" in unbound.message
    )
    assert "check that 10.0.0.3 (the address in n3's agent config)" in unbound.action
    assert checks["migration port n3 -> n1"].status is CheckStatus.WARN
    assert "agent api n1 -> n2" not in checks  # api and migration probes are told apart
