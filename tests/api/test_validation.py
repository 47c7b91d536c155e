"""``GET /cluster/validate`` and ``GET /probe`` over a MemoryStore, with real agent APIs on
loopback ports (the probes are real TCP connections)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from hvcluster.models.base import encode
from hvcluster.models.lifecycle import VMState
from hvcluster.models.node import Inventory
from hvcluster.models.storage import Switch, Volume
from hvcluster.models.vm import VMStatus
from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import KEYS
from tests.validate.agents import Agents, free_port

# agents that must answer within seconds: not on a core shared with other tests
pytestmark = [pytest.mark.timeout(60), pytest.mark.alone]


@pytest.fixture
async def agents(store: MemoryStore) -> AsyncIterator[Agents]:
    a = Agents(store, KEYS)
    try:
        yield a
    finally:
        await a.stop()


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


async def test_missing_volume_and_bridge_fail_naming_the_node(
    api: httpx.AsyncClient, store: MemoryStore, agents: Agents
) -> None:
    volume = Volume(name="csv1", path="/srv/csv1", id="a" * 32)
    await store.put(KEYS.volume("csv1"), encode(volume))
    await store.put(KEYS.switch("lan"), encode(Switch(name="lan")))
    await agents.add("n1", switches=("lan",), volumes=("csv1",), volume_free_mib={"csv1": 9000})
    await agents.add(
        "n2",
        switches=(),
        volumes=(),
        switch_problems={"lan": "not root: cannot create bridge hvc-lan"},
        volume_problems={"csv1": f"marker holds id {'b' * 32}"},
    )
    r = await api.get("/cluster/validate")
    assert r.status_code == 200, r.text
    report = r.json()
    by = checks(report)
    vol = by["volume csv1"]
    assert vol["status"] == "fail" and vol["nodes"] == ["n2"]
    assert "n2 (marker holds id bbbb" in vol["message"]
    sw = by["switch lan"]
    assert sw["status"] == "fail" and sw["nodes"] == ["n2"] and "not root" in sw["message"]
    # both agents serve their APIs: each reaches the other, and n2's clock was read
    assert by["agent api n1 -> n2"]["status"] == "pass"
    assert by["agent api n2 -> n1"]["status"] == "pass"
    assert by["clock n2"]["status"] == "pass"
    assert by["live migration n1 <-> n2"]["status"] == "pass"
    assert by["leader"]["status"] == "pass"
    statuses = {c["status"] for c in report["checks"]}
    assert statuses <= {"pass", "warn", "fail"} and "fail" in statuses
    assert report["served_by"] == "n1" and report["cluster"] == KEYS.cluster


async def test_an_agent_that_does_not_answer(
    api: httpx.AsyncClient, store: MemoryStore, agents: Agents
) -> None:
    await agents.add("n1")
    await agents.add("n2")
    await agents.register("n3", free_port())  # alive in the store, nothing listens
    by = checks((await api.get("/cluster/validate")).json())
    for source in ("n1", "n2"):
        down = by[f"agent api {source} -> n3"]
        assert down["status"] == "fail" and down["nodes"] == [source, "n3"], down
        assert "refused" in down["message"].lower()
    assert by["agent api n3 -> n1"]["status"] == "warn"  # n3 could not be asked
    assert by["clock n3"]["status"] == "warn"
    assert by["agent api n1 -> n2"]["status"] == "pass"


async def test_probe_answers_only_for_registered_nodes(
    api: httpx.AsyncClient, store: MemoryStore, agents: Agents
) -> None:
    port = await agents.serve("n2")
    await agents.register("n2", port)
    closed = free_port()
    await agents.register("n3", closed)
    clock = (await api.get("/probe")).json()
    assert clock["node"] == "n1" and clock["target"] is None and clock["time"] > 0
    ok = (await api.get("/probe", params={"target": f"127.0.0.1:{port}"})).json()
    assert ok["reachable"] is True and ok["latency_ms"] >= 0
    refused = (await api.get("/probe", params={"target": f"127.0.0.1:{closed}"})).json()
    assert refused["reachable"] is False and refused["error"]
    for target in ("127.0.0.1:22", "example.org:80", f"127.0.0.2:{port}", "nonsense"):
        r = await api.get("/probe", params={"target": target})
        assert r.status_code == 422, target
        assert r.json()["field"] == "target" and "registered node" in r.json()["error"]


async def test_a_hung_agent_is_unknown_not_a_hang(
    api: httpx.AsyncClient, store: MemoryStore, agents: Agents
) -> None:
    """A host whose agent accepts connections but never answers (frozen): the others reach
    its port, what it sees is unknown, its clock unread; the report still comes back."""
    held: list[asyncio.StreamWriter] = []

    async def accept_and_hang(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    hung = await asyncio.start_server(accept_and_hang, "127.0.0.1", 0)
    try:
        port = hung.sockets[0].getsockname()[1]
        await agents.add("n1")
        await agents.register("n3", port)
        r = await api.get("/cluster/validate", timeout=20)
        by = checks(r.json())
        assert by["agent api n1 -> n3"]["status"] == "pass"  # the port accepts
        unknown = by["agent api n3 -> n1"]
        assert unknown["status"] == "warn" and "did not answer" in unknown["message"]
        assert by["clock n3"]["status"] == "warn"
    finally:
        for writer in held:
            writer.close()
        hung.close()
        await hung.wait_closed()


async def test_cpu_models_of_running_vms_are_checked_per_direction(
    api: httpx.AsyncClient, store: MemoryStore, agents: Agents
) -> None:
    """n1 also provides Haswell and runs web with it; n2 provides qemu64 only."""
    provides = Inventory(guest_cpu_model="qemu64", guest_cpu_models=("qemu64", "Haswell"))
    await agents.add("n1", inventory=provides)
    await agents.add("n2", inventory=Inventory(guest_cpu_model="qemu64"))
    web = VMStatus(vm="web", node="n1", epoch=1, state=VMState.RUNNING, cpu_model="Haswell")
    await store.put(KEYS.status("web"), encode(web))
    stopped = VMStatus(vm="old", node="n1", epoch=1, state=VMState.STOPPED, cpu_model="EPYC")
    await store.put(KEYS.status("old"), encode(stopped))  # no CPU state left: not counted
    r = await api.get("/cluster/validate")
    assert r.status_code == 200, r.text
    by = checks(r.json())
    there = by["CPU models n1 -> n2"]
    assert there["status"] == "fail" and there["nodes"] == ["n1", "n2"]
    assert there["message"] == (
        "live and quick migration impossible from n1 to n2 (model Haswell not available on "
        "n2): cold move only; n1 runs web with it"
    )
    assert by["CPU models n2 -> n1"]["status"] == "pass"
