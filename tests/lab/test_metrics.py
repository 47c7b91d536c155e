"""``/metrics`` of real agent processes (a sim lab: etcd and agents on loopback, TLS):
scraped over https as Prometheus would, parsed with prometheus_client's parser, and checked
against the API: VMs by state and node, a live migration counted once with its downtime,
then a failover when a node's host is killed. The agents' own etcd clients (liveness's thread
included) are timed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.lab.conftest import Lab, make_lab, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def sim_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from make_lab(tmp_path_factory.mktemp("metrics-lab"), "sim", nodes=2)


def scrape(lab: Lab, node: str) -> Samples:
    """``node``'s /metrics, with a bearer token as Prometheus sends it."""
    url = lab.state.api_url(lab.state.node(node)) + "/metrics"
    r = httpx.get(url, headers=lab.headers, verify=lab.ca, timeout=10)
    assert r.status_code == 200, r.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def named(m: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples with ``labels`` (absent: 0)."""
    want = set(labels.items())
    return sum(v for (n, lbls), v in m.items() if n == name and want <= set(lbls))


def vms_by_node_and_state(m: Samples) -> Counter[tuple[str, str]]:
    return Counter(
        {
            (dict(lbls)["node"], dict(lbls)["state"]): int(v)
            for (n, lbls), v in m.items()
            if n == "hvc_vms" and v
        }
    )


def test_metrics_of_real_agents_agree_with_the_api(sim_lab: Lab) -> None:
    lab = sim_lab
    nodes = ("n1", "n2")
    wait_for(lambda: all(n["alive"] for n in lab.get("/nodes")["nodes"]), 30, "nodes alive")
    lab.post("/vms", {"name": "mweb", "memory_mib": 128, "ha": {"preferred_owners": ["n1"]}})

    def running_on_n1() -> bool:
        vm = lab.vm("mweb")
        return bool(vm["state"] == "running" and vm["node"] == "n1")

    wait_for(running_on_n1, 30, "mweb running on n1")

    def agree() -> bool:  # VMs by state and node: as GET /vms says, on every agent
        listed = Counter((v["node"], v["state"]) for v in lab.get("/vms")["vms"])
        return all(vms_by_node_and_state(scrape(lab, n)) == listed for n in nodes)

    wait_for(agree, 20, "every agent's hvc_vms to equal GET /vms")
    before = [scrape(lab, n) for n in nodes]
    for node, m in zip(nodes, before, strict=True):
        assert named(m, "hvc_agent_info", node=node) == 1
        assert named(m, "hvc_node_up") == 2
        assert named(m, "hvc_etcd_request_seconds_count", op="keepalive", outcome="ok") >= 1
        assert named(m, "hvc_etcd_request_seconds_count", op="txn", outcome="ok") >= 1
        assert named(m, "hvc_lease_renew_seconds_count") >= 1
        assert 0 <= named(m, "hvc_watchdog_feed_age_seconds") < 3.0  # fence_after
    assert sum(named(m, "hvc_controller_leader") for m in before) == 1
    done_before = sum(named(m, "hvc_migration_duration_seconds_count") for m in before)

    rec: dict[str, Any] = lab.post("/vms/mweb/move", {"to": "n2"})

    def timed() -> dict[str, Any] | None:
        got: dict[str, Any] = lab.get(f"/migrations/{rec['id']}")
        assert got["state"] not in ("failed", "cancelled"), got
        return got if got["downtime_ms"] is not None else None

    final: dict[str, Any] = wait_for(timed, 60, "the migration done with its downtime")
    after = [scrape(lab, n) for n in nodes]
    count = sum(named(m, "hvc_migration_duration_seconds_count", kind="live") for m in after)
    assert count == done_before + 1
    downtime = sum(
        named(m, "hvc_migration_downtime_seconds_sum", kind="live") for m in after
    ) - sum(named(m, "hvc_migration_downtime_seconds_sum", kind="live") for m in before)
    assert downtime == pytest.approx(final["downtime_ms"] / 1000)

    # The record has its downtime once the target resumed the VM; its status says so a
    # moment later (the agent's status write): hvc_vms follows the status.
    def moved() -> bool:
        vm = lab.vm("mweb")
        return bool(vm["state"] == "running" and vm["node"] == "n2") and agree()

    wait_for(moved, 20, "mweb running on n2, and hvc_vms following the move")
    assert vms_by_node_and_state(scrape(lab, "n1"))[("n2", "running")] == 1

    # n2's host dies: mweb fails over to n1, whose controller leads (if it did not yet) and
    # counts it; its agent's numbers say what GET /nodes and the events say.
    lab.fault("kill", "n2")

    def back_on_n1() -> bool:
        vm = lab.vm("mweb", avoid="n2")
        return bool(vm["state"] == "running" and vm["node"] == "n1")

    wait_for(back_on_n1, 60, "mweb failed over to n1")
    recovered = [e["event"] for e in lab.events(avoid="n2") if e["event"]["kind"] == "vm.recovered"]
    assert [e["subject"] for e in recovered].count("vm/mweb") == 1
    m = scrape(lab, "n1")
    failovers = named(m, "hvc_vm_failovers_total", from_node="n2", cause="node_dead")
    assert failovers == len(recovered)  # (mweb, and any other VM n2 ran)
    assert named(m, "hvc_controller_leader") == 1
    alive = {n["name"]: n["alive"] for n in lab.get("/nodes", avoid="n2")["nodes"]}
    assert alive == {"n1": True, "n2": False}
    assert named(m, "hvc_node_up", node="n2") == 0 and named(m, "hvc_node_up", node="n1") == 1
