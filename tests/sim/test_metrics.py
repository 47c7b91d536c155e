"""``/metrics`` of real agents (a sim cluster on a memory store): each scraped as its daemon
serves it (its own AgentMetrics), parsed with prometheus_client's parser, and its numbers
checked against the API and the cluster's events."""

from __future__ import annotations

import secrets

import httpx
import pytest

from hvcluster.api import create_app
from hvcluster.models.lifecycle import MigrationState, VMState
from hvcluster.models.migration import Migration
from hvcluster.models.token import Role
from tests.api.test_metrics import Samples, by_label, parse
from tests.sim.cluster import FAST, SimCluster
from tests.sim.moves import move, record, wait_state
from tests.tokens import api_client, auth, make_token

pytestmark = pytest.mark.timeout(60)


async def scrape(cluster: SimCluster, node: str) -> Samples:
    """``node``'s /metrics, from the app its daemon would serve (its own metrics)."""
    daemon = cluster.daemons[node]
    app = create_app(cluster.store, cluster.keys, node, agent_metrics=daemon.metrics)
    name = f"prom-{secrets.token_hex(4)}"
    bearer = await make_token(cluster.store, cluster.keys, name, Role.READER)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, headers=auth(bearer)) as client:
        r = await client.get("http://api/metrics")
    assert r.status_code == 200, r.text
    return parse(r.text)


def total(samples: list[Samples], name: str, **labels: str) -> float:
    """``name``'s samples with ``labels`` summed over agents (absent: 0)."""
    want = set(labels.items())
    return sum(
        value for m in samples for (n, lbls), value in m.items() if n == name and want <= set(lbls)
    )


async def test_every_agent_tells_the_cluster_as_the_api_does_and_its_own_liveness(
    cluster: SimCluster,
) -> None:
    await cluster.start("n1", "n2", "n3")
    await cluster.create_vm("a", ha={"preferred_owners": ["n1"]})
    await cluster.create_vm("b", ha={"preferred_owners": ["n2"]})
    await cluster.create_vm("c", desired_state="stopped")
    assert await cluster.wait_running("a") == "n1"
    assert await cluster.wait_running("b") == "n2"

    async def reported() -> bool:
        statuses = [await cluster.status(vm) for vm in ("a", "b")]
        return all(s is not None and s.state is VMState.RUNNING for s in statuses)

    await cluster.wait_for(reported, 10, "a and b reported running")
    scraped = {node: await scrape(cluster, node) for node in ("n1", "n2", "n3")}
    async with api_client(cluster.store, cluster.keys, role=Role.READER) as api:
        listed = (await api.get("/vms")).json()["vms"]
    expected = {(v["node"], v["state"]) for v in listed}
    assert expected == {("n1", "running"), ("n2", "running"), ("", "stopped")}
    for node, m in scraped.items():
        vms = by_label(m, "hvc_vms", "node", "state")
        assert {k for k, v in vms.items() if v} == expected, node  # the same on every agent
        assert by_label(m, "hvc_node_up", "node") == {("n1",): 1, ("n2",): 1, ("n3",): 1}
        assert by_label(m, "hvc_agent_info", "node") == {(node,): 1}
        # its own liveness: keepalives confirmed, the watchdog fed within an interval
        assert m[("hvc_lease_renew_seconds_count", ())] >= 1, node
        assert m[("hvc_lease_renew_failures_total", ())] == 0, node
        assert m[("hvc_watchdog_feed_age_seconds", ())] <= 2 * FAST.keepalive_interval_s
        assert m[("hvc_watchdog_deadline_seconds", ())] > 0
        assert m[("hvc_watchdog_fences_total", ())] == 0
    leaders = [node for node, m in scraped.items() if m[("hvc_controller_leader", ())] == 1]
    leader = cluster.leader()
    assert leader is not None and leaders == [leader.name]
    assert scraped[leader.name][("hvc_controller_cycle_seconds_count", ())] >= 1
    followers = [m for node, m in scraped.items() if node != leader.name]
    assert all(m[("hvc_controller_cycle_seconds_count", ())] == 0 for m in followers)


async def test_a_live_migration_is_counted_once_with_its_downtime(cluster: SimCluster) -> None:
    await cluster.start("n1", "n2")
    await cluster.create_vm("web", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("web") == "n1"
    before = [await scrape(cluster, n) for n in ("n1", "n2")]
    assert total(before, "hvc_migration_duration_seconds_count") == 0
    rec = await move(cluster, "web", "n2")
    done = await wait_state(cluster, rec.id, MigrationState.DONE, MigrationState.FAILED)
    assert done.state is MigrationState.DONE, done.reason

    async def timed() -> Migration | None:
        got = await record(cluster, rec.id)
        return got if got.downtime_ms is not None else None

    final: Migration = await cluster.wait_for(timed, 10, "the downtime recorded")
    assert final.downtime_ms is not None and final.total_ms is not None
    after = [await scrape(cluster, n) for n in ("n1", "n2")]
    assert total(after, "hvc_migration_duration_seconds_count", kind="live") == 1
    assert total(after, "hvc_migration_downtime_seconds_count", kind="live") == 1
    downtime = total(after, "hvc_migration_downtime_seconds_sum", kind="live")
    assert downtime == pytest.approx(final.downtime_ms / 1000)
    duration = total(after, "hvc_migration_duration_seconds_sum", kind="live")
    assert duration == pytest.approx(final.total_ms / 1000)


async def test_failovers_and_restarts_are_counted_as_the_events_say(
    cluster: SimCluster,
) -> None:
    await cluster.start("n1", "n2", "n3")
    await cluster.create_vm("web", ha={"preferred_owners": ["n2"]})
    await cluster.create_vm("db", ha={"preferred_owners": ["n2"]})
    await cluster.create_vm("crashy", ha={"possible_owners": ["n1"]})
    for vm, node in (("web", "n2"), ("db", "n2"), ("crashy", "n1")):
        assert await cluster.wait_running(vm) == node
    cluster.drivers["n1"].inject_crash("crashy")

    async def restarted() -> bool:
        s = await cluster.status("crashy")
        return s is not None and s.restarts >= 1 and s.state is VMState.RUNNING

    await cluster.wait_for(restarted, 10, "crashy restarted on n1")
    await cluster.crash("n2")
    for vm in ("web", "db"):
        await cluster.wait_running(vm, timeout=20, not_on="n2")
    leader = cluster.leader()
    assert leader is not None
    scraped = [await scrape(cluster, n) for n in ("n1", "n3")]
    recovered = await cluster.event_list("vm.recovered")
    assert len(recovered) == 2
    assert total(scraped, "hvc_vm_failovers_total") == len(recovered)
    assert total(scraped, "hvc_vm_failovers_total", from_node="n2", cause="node_dead") == 2
    mine = await scrape(cluster, leader.name)
    assert total([mine], "hvc_vm_failovers_total") == 2  # only the leader counts them
    restarts = await cluster.event_list("vm.restarted", "vm/crashy")
    assert len(restarts) == 1
    assert total(scraped, "hvc_vm_restarts_total") == len(restarts)
    assert by_label(scraped[0], "hvc_node_up", "node") == {("n1",): 1, ("n2",): 0, ("n3",): 1}


async def test_a_vm_whose_local_restarts_ran_out_is_a_failover_of_its_own_cause(
    cluster: SimCluster,
) -> None:
    await cluster.start("n1", "n2")
    await cluster.create_vm("flaky", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("flaky") == "n1"
    driver = cluster.drivers["n1"]
    for i in range(FAST.local_restart_threshold + 1):
        driver.inject_crash("flaky")

        async def handled(n: int = i) -> bool:
            s = await cluster.status("flaky")
            return s is not None and (s.restarts > n or s.node != "n1")

        await cluster.wait_for(handled, 10, f"crash {i + 1} handled")
    assert await cluster.wait_running("flaky", not_on="n1") == "n2"
    scraped = [await scrape(cluster, n) for n in ("n1", "n2")]
    recovered = await cluster.event_list("vm.recovered", "vm/flaky")
    assert len(recovered) == 1
    assert total(scraped, "hvc_vm_failovers_total", from_node="n1", cause="vm_failed") == 1
    assert total(scraped, "hvc_vm_failovers_total", cause="node_dead") == 0
    restarts = await cluster.event_list("vm.restarted", "vm/flaky")
    assert total(scraped, "hvc_vm_restarts_total") == len(restarts) == FAST.local_restart_threshold
