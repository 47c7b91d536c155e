"""Admission control through the API: an HA VM that would leave fewer node failures
survived than the setting is refused (409, naming why) or warned about (an event, and in
the answer);
``GET /cluster/capacity`` says what the running HA VMs survive. A balance request with no
controller to answer it says so."""

from __future__ import annotations

import httpx

from hvcluster.agent.node import cycle_prefixes
from hvcluster.api import create_app
from hvcluster.models.base import encode
from hvcluster.models.config import AdmissionSettings, ClusterConfig
from hvcluster.models.vm import Placement
from hvcluster.store.cache import WatchedCache
from hvcluster.store.memory_store import MemoryStore
from tests.counting import CountingStore
from tests.tokens import auth, make_token

from .conftest import KEYS, add_node, kinds, spec


async def _cluster(store: MemoryStore, action: str) -> None:
    config = ClusterConfig(
        name="t", admission=AdmissionSettings(node_failures_tolerated=1, action=action)
    )
    await store.put(KEYS.config, encode(config))
    await add_node(store, "n1")
    await add_node(store, "n2")  # 4 vCPUs, 4096 MiB each


async def test_an_ha_vm_that_breaks_the_setting_is_refused(
    store: MemoryStore, api: httpx.AsyncClient
) -> None:
    await _cluster(store, "refuse")
    first = await api.post("/vms", json=spec("db-1", memory_mib=3000))
    assert first.status_code == 201, first.text  # n1 may fail: n2 takes it
    await store.put(KEYS.placement("db-1"), encode(Placement(node="n1", epoch=1)))
    capacity = (await api.get("/cluster/capacity")).json()
    assert capacity["survived"] == 1 and capacity["meets"] and capacity["ha_vms"] == 1
    second = await api.post("/vms", json=spec("db-2", memory_mib=3000))
    assert second.status_code == 409
    error = second.json()["error"]
    assert error.startswith("admission control refuses db-2: with db-2 the running HA VMs")
    assert "survive 0 node failure(s), fewer than the 1" in error
    # not HA (never restarted elsewhere): no room is kept for it
    lone = spec("scratch", memory_mib=3000, ha={"priority": "no_auto_start"})
    assert (await api.post("/vms", json=lone)).status_code == 201


async def test_starting_an_ha_vm_is_checked_too_and_warn_only_warns(
    store: MemoryStore, api: httpx.AsyncClient
) -> None:
    await _cluster(store, "warn")
    assert (await api.post("/vms", json=spec("db-1", memory_mib=3000))).status_code == 201
    await store.put(KEYS.placement("db-1"), encode(Placement(node="n1", epoch=1)))
    stopped = spec("db-2", memory_mib=3000, desired_state="stopped")
    assert (await api.post("/vms", json=stopped)).status_code == 201  # stopped: not HA now
    assert "vm.admission_warning" not in await kinds(store)
    started = await api.post("/vms/db-2/start")
    assert started.status_code == 202  # warn: it starts
    assert "vm.admission_warning" in await kinds(store)
    # the answer says it too, for the admin who asked, at once
    [warning] = started.json()["warnings"]
    assert warning.startswith("admission control: with db-2 the running HA VMs")
    again = await api.post("/vms/db-2/start")  # running already: nothing checked, no warning
    assert again.status_code == 202 and again.json()["warnings"] == []
    created = await api.post("/vms", json=spec("db-3", memory_mib=3000))
    assert created.status_code == 201
    assert created.json()["warnings"][0].startswith("admission control: with db-3")
    shown = await api.get("/vms/db-3")
    assert shown.json()["warnings"] == []  # said once, to whoever acted: never stored


async def test_no_controller_no_balance_plan(store: MemoryStore, api: httpx.AsyncClient) -> None:
    answer = await api.post("/cluster/balance", json={"apply": False, "wait_s": 0.3})
    assert answer.status_code == 409
    assert "no controller is elected to plan a balance" in answer.json()["error"]
    # a candidate that never answers (its agent hangs): 503, and the request is withdrawn
    await store.put(KEYS.election() + "1", b"n9")
    answer = await api.post("/cluster/balance", json={"apply": False, "wait_s": 0.3})
    assert answer.status_code == 503
    assert "no controller answered the balance request" in answer.json()["error"]
    assert not (await store.range(KEYS.prefix("requests"))).kvs


async def test_an_agents_api_counts_from_its_cache_with_the_same_answer() -> None:
    """On an agent, the API reads the VMs and placements for the count from the agent's
    watched cache (the same process), not from the store on each request; the answer is
    the one a read of the store gives, a placement written just before included."""
    said: dict[bool, list[str]] = {}
    for cached in (False, True):
        store = CountingStore()
        cache = WatchedCache(store, cycle_prefixes(KEYS)) if cached else None
        await _cluster(store, "warn")
        headers = auth(await make_token(store, KEYS))
        transport = httpx.ASGITransport(app=create_app(store, KEYS, "n1", cache=cache))
        try:
            async with httpx.AsyncClient(
                transport=transport, base_url="http://api/api/v1", headers=headers
            ) as api:
                assert (await api.post("/vms", json=spec("db-1", memory_mib=3000))).is_success
                await store.put(KEYS.placement("db-1"), encode(Placement(node="n1", epoch=1)))
                store.got.clear()
                second = await api.post("/vms", json=spec("db-2", memory_mib=3000))
                assert second.status_code == 201, second.text
                said[cached] = second.json()["warnings"]
                assert (KEYS.prefix("vms") in store.got) is not cached, (cached, store.got)
        finally:
            if cache is not None:
                await cache.close()
    assert said[True] == said[False] and said[True][0].startswith("admission control: with db-2")
