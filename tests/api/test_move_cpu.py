"""``POST /vms/{name}/move`` refuses up front (409, with the reason) a live or quick move to
a node that cannot provide the CPU model the VM runs with; the same rule as the controller's
(models/guestcpu.py)."""

from __future__ import annotations

import httpx

from hvcluster.models.base import decode, encode
from hvcluster.models.lifecycle import VMState
from hvcluster.models.node import Inventory, Node
from hvcluster.models.vm import Placement, VMStatus
from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import KEYS, add_node, spec


async def with_models(store: MemoryStore, name: str, default: str, *models: str) -> None:
    """``name``'s agent reports guests get ``default`` and it provides ``models``."""
    await add_node(store, name)
    kv = await store.get(KEYS.node(name))
    assert kv is not None
    node = decode(Node, kv.key, kv.value)
    inv = Inventory(guest_cpu_model=default, guest_cpu_models=(default, *models))
    await store.put(KEYS.node(name), encode(node.model_copy(update={"inventory": inv})))


async def running_with(api: httpx.AsyncClient, store: MemoryStore, vm: str, model: str) -> None:
    await api.post("/vms", json=spec(vm))
    await store.put(KEYS.placement(vm), encode(Placement(node="n1", epoch=3)))
    status = VMStatus(vm=vm, node="n1", epoch=3, state=VMState.RUNNING, cpu_model=model)
    await store.put(KEYS.status(vm), encode(status))


async def test_a_target_that_cannot_provide_the_vms_model_is_refused(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await with_models(store, "n1", "qemu64", "Nehalem")
    await with_models(store, "n2", "qemu64")  # no Nehalem
    await with_models(store, "n3", "Westmere", "Nehalem")
    await running_with(api, store, "web", "Nehalem")  # started with it on n1
    for kind in ("live", "quick"):
        r = await api.post("/vms/web/move", json={"to": "n2", "kind": kind})
        assert r.status_code == 409, r.text
        assert r.json()["error"] == (
            "cannot move web to n2: live and quick migration impossible from n1 to n2 "
            "(model Nehalem not available on n2: it provides qemu64): cold move only"
        )
    # n3's default differs, but it provides Nehalem: the move is stored
    r = await api.post("/vms/web/move", json={"to": "n3", "kind": "live"})
    assert r.status_code == 202, r.text


async def test_no_target_named_and_none_provides_the_model(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await with_models(store, "n1", "qemu64", "Nehalem")
    await with_models(store, "n2", "qemu64")
    await running_with(api, store, "db", "Nehalem")
    r = await api.post("/vms/db/move", json={"kind": "quick"})
    assert r.status_code == 409
    assert r.json()["error"].startswith("no node can take db: live and quick migration")
    # the same VM started with qemu64 (what n1 gives by default) may go
    await running_with(api, store, "app", "")
    assert (await api.post("/vms/app/move", json={"kind": "live"})).status_code == 202
