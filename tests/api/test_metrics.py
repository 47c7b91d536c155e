"""``GET /metrics``: Prometheus' text, parsed with prometheus_client's own parser; the
cluster-wide facts equal what the API's lists say, read from the same store."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hvcluster.api import create_app
from hvcluster.api.metrics import READ_TIMEOUT_S
from hvcluster.metrics import AgentMetrics
from hvcluster.models.base import decode, encode
from hvcluster.models.lifecycle import NodeAdminState, VMState
from hvcluster.models.token import Role
from hvcluster.models.vm import Placement, VMSpec, VMStatus
from hvcluster.store.base import Compare, Op, TxnResult
from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import KEYS, add_node, spec
from tests.tokens import auth, make_token

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def by_label(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The samples of metric ``name``, by the values of ``labels``."""
    out = {}
    for (n, lbls), value in samples.items():
        if n == name:
            d = dict(lbls)
            out[tuple(d[label] for label in labels)] = value
    return out


async def scrape(client: httpx.AsyncClient) -> Samples:
    r = await client.get("http://api/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(r.text)


async def place(store: MemoryStore, vm: str, node: str, state: VMState | None) -> None:
    """Place ``vm`` on ``node`` (as the controller does) and report ``state`` there (as
    its agent does; None: not reported yet)."""
    kv = await store.get(KEYS.vm(vm))
    assert kv is not None
    uid = decode(VMSpec, kv.key, kv.value).uid
    await store.put(KEYS.placement(vm), encode(Placement(node=node, epoch=1, uid=uid)))
    if state is not None:
        status = VMStatus(vm=vm, node=node, epoch=1, state=state, uid=uid)
        await store.put(KEYS.status(vm), encode(status))


async def test_cluster_facts_are_what_the_api_lists(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_node(store, "n1")
    await add_node(store, "n2", admin=NodeAdminState.PAUSED)
    await add_node(store, "n3", alive=False)
    for name, vcpus, memory in (("a", 1, 128), ("b", 2, 256), ("c", 1, 512), ("d", 1, 128)):
        r = await api.post("/vms", json=spec(name, vcpus=vcpus, memory_mib=memory))
        assert r.status_code == 201, r.text
    assert (await api.post("/vms", json=spec("e", desired_state="stopped"))).status_code == 201
    await place(store, "a", "n1", VMState.RUNNING)
    await place(store, "b", "n1", VMState.STARTING)
    await place(store, "c", "n2", VMState.RUNNING)
    await place(store, "d", "n3", None)  # placed, not reported: pending (as the API shows)

    m = await scrape(api)

    listed = (await api.get("/vms")).json()["vms"]
    expected = Counter((v["node"], v["state"]) for v in listed)
    assert expected == {
        ("n1", "running"): 1,
        ("n1", "starting"): 1,
        ("n2", "running"): 1,
        ("n3", "pending"): 1,
        ("", "stopped"): 1,
    }
    vms = by_label(m, "hvc_vms", "node", "state")
    assert {k: v for k, v in vms.items() if v} == expected
    assert vms[("n2", "failed")] == 0  # every state of every node, so no series vanishes
    assert sum(vms.values()) == len(listed)

    nodes = {n["name"]: n for n in (await api.get("/nodes")).json()["nodes"]}
    up = by_label(m, "hvc_node_up", "node")
    assert up == {(name,): float(n["alive"]) for name, n in nodes.items()}
    assert up == {("n1",): 1, ("n2",): 1, ("n3",): 0}
    admin = by_label(m, "hvc_node_admin_state", "node", "state")
    assert {k for k, v in admin.items() if v} == {
        (name, n["admin_state"]) for name, n in nodes.items()
    }
    cpus = by_label(m, "hvc_node_cpus", "node")
    assert cpus == {(name,): n["node"]["capacity"]["cpus"] for name, n in nodes.items()}
    memory = by_label(m, "hvc_node_memory_bytes", "node")
    assert memory[("n1",)] == nodes["n1"]["node"]["capacity"]["memory_mib"] * 2**20
    assert by_label(m, "hvc_node_cpus_allocated", "node") == {("n1",): 3, ("n2",): 1, ("n3",): 1}
    allocated = by_label(m, "hvc_node_memory_allocated_bytes", "node")
    assert allocated == {("n1",): 384 * 2**20, ("n2",): 512 * 2**20, ("n3",): 128 * 2**20}
    assert m[("hvc_store_read_ok", ())] == 1
    assert m[("hvc_store_revision", ())] <= await store.revision()
    assert m[("hvc_jobs", ())] == 0
    assert by_label(m, "hvc_agent_info", "node") == {("n1",): 1}


async def test_a_vm_changing_state_moves_its_count(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_node(store, "n1")
    assert (await api.post("/vms", json=spec("a"))).status_code == 201
    await place(store, "a", "n1", VMState.STARTING)
    before = by_label(await scrape(api), "hvc_vms", "node", "state")
    await place(store, "a", "n1", VMState.RUNNING)
    after = by_label(await scrape(api), "hvc_vms", "node", "state")
    assert (before[("n1", "starting")], before[("n1", "running")]) == (1, 0)
    assert (after[("n1", "starting")], after[("n1", "running")]) == (0, 1)


@pytest.fixture
async def raw(store: MemoryStore) -> AsyncIterator[httpx.AsyncClient]:
    """A client of n1's API without a token."""
    transport = httpx.ASGITransport(app=create_app(store, KEYS, "n1"))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client


async def test_metrics_need_a_reader_token(raw: httpx.AsyncClient, store: MemoryStore) -> None:
    r = await raw.get("/metrics")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    reader = await make_token(store, KEYS, "prometheus", Role.READER)
    r = await raw.get("/metrics", headers=auth(reader))
    assert r.status_code == 200, r.text
    assert ("hvc_store_read_ok", ()) in parse(r.text)


async def test_the_agents_own_measurements_are_served(store: MemoryStore) -> None:
    """What the agent records into its AgentMetrics is in the answer, beside the facts."""
    mine = AgentMetrics("n7")
    mine.restarts.inc()
    mine.migration_done("live", total_ms=2500.0, downtime_ms=40.0)
    transport = httpx.ASGITransport(app=create_app(store, KEYS, "n7", agent_metrics=mine))
    headers = auth(await make_token(store, KEYS, "prometheus", Role.READER))
    async with httpx.AsyncClient(transport=transport, headers=headers) as client:
        m = await scrape(client)
    assert m[("hvc_vm_restarts_total", ())] == 1
    assert m[("hvc_migration_duration_seconds_count", (("kind", "live"),))] == 1
    assert m[("hvc_migration_downtime_seconds_sum", (("kind", "live"),))] == 0.04
    assert m[("hvc_migration_duration_seconds_bucket", (("kind", "live"), ("le", "2.0")))] == 0
    assert m[("hvc_migration_duration_seconds_bucket", (("kind", "live"), ("le", "5.0")))] == 1
    assert by_label(m, "hvc_agent_info", "node") == {("n7",): 1}
    assert ("hvc_watchdog_feed_age_seconds", ()) not in m  # never fed: nothing to say


class SlowSnapshotStore(MemoryStore):
    """A store whose multi-prefix reads (the snapshot) never answer; single gets (the
    token check) do."""

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        if not compares and len(success) > 1:
            await asyncio.Event().wait()
        return await super().txn(compares, success, failure)


@pytest.mark.timeout(30)
async def test_without_the_store_the_agents_own_numbers_are_still_served() -> None:
    store = SlowSnapshotStore()
    mine = AgentMetrics("n1")
    mine.lease_renew_failures.inc(3)
    transport = httpx.ASGITransport(app=create_app(store, KEYS, "n1", agent_metrics=mine))
    headers = auth(await make_token(store, KEYS, "prometheus", Role.READER))
    async with httpx.AsyncClient(transport=transport, headers=headers) as client:
        started = asyncio.get_running_loop().time()
        m = await scrape(client)
        took = asyncio.get_running_loop().time() - started
    await store.close()
    assert m[("hvc_store_read_ok", ())] == 0
    assert m[("hvc_lease_renew_failures_total", ())] == 3
    assert not [name for name, _ in m if name.startswith(("hvc_vms", "hvc_node_"))]
    assert READ_TIMEOUT_S <= took < READ_TIMEOUT_S + 2
