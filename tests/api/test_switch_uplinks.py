"""``POST /switches`` refuses an uplink that a node reports carrying an address or the
default route: bridging it would take that node off the network (MemoryStore)."""

from __future__ import annotations

import httpx

from hvcluster.models.base import decode, encode
from hvcluster.models.node import Node
from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import KEYS, add_node, kinds


async def _report(store: MemoryStore, name: str, in_use: dict[str, str]) -> None:
    """What node ``name``'s agent writes of its interfaces."""
    await add_node(store, name)
    kv = await store.get(KEYS.node(name))
    assert kv is not None
    node = decode(Node, kv.key, kv.value).model_copy(update={"interfaces_in_use": in_use})
    await store.put(KEYS.node(name), encode(node))


async def test_an_uplink_carrying_an_address_or_the_default_route_is_refused(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await _report(store, "n1", {"eth0": "address 10.0.0.5/24, the default route (IPv4)"})
    await _report(store, "n2", {"eth0": "address 10.0.0.6/24", "eth2": "address 192.0.2.9/24"})
    before = await store.range(KEYS.prefix("switches"))
    r = await api.post("/switches", json={"name": "lan", "type": "external", "uplink": "eth0"})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == "uplink"
    assert "on n1: address 10.0.0.5/24, the default route (IPv4)" in body["error"]
    assert "on n2: address 10.0.0.6/24" in body["error"]
    assert "cut n1, n2 off the network" in body["error"]
    r = await api.post("/switches", json={"name": "dmz", "type": "external", "uplink": "eth2"})
    assert r.status_code == 422 and "on n2: address 192.0.2.9/24" in r.json()["error"]
    assert "n1" not in r.json()["error"]
    assert (await store.range(KEYS.prefix("switches"))).kvs == before.kvs  # nothing stored
    assert "switch.added" not in await kinds(store)
    # An interface no node uses for its own traffic is fine.
    ok = await api.post("/switches", json={"name": "lan", "type": "external", "uplink": "eth1"})
    assert ok.status_code == 201, ok.text


async def test_an_uplink_a_switch_cannot_have_is_refused_naming_the_field(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    for body, words in (
        ({"name": "lan", "uplink": "eth1"}, "only for external switches, not private ones"),
        ({"name": "lan", "type": "external", "uplink": "hvc-wan"}, "one of our own bridges"),
    ):
        r = await api.post("/switches", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "uplink" and words in r.json()["error"], r.text
    assert (await store.range(KEYS.prefix("switches"))).kvs == ()
