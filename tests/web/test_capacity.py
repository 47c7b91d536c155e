"""The overview's failover capacity line: would the running HA VMs fit on the other open
nodes if any one node were lost, by the API's fitting rule, each counted where it lands?"""

from __future__ import annotations

from hvcluster.api.context import ApiContext
from hvcluster.models.base import encode
from hvcluster.models.lifecycle import NodeAdminState, VMState
from hvcluster.models.vm import HAPolicy, Placement, Priority, VMSpec, VMStatus
from hvcluster.store.memory_store import MemoryStore
from hvcluster.web.overview import failover_capacity, overview
from tests.api.conftest import KEYS, add_node


async def run(store: MemoryStore, name: str, node: str, vcpus: int, **ha: object) -> None:
    """A VM placed on ``node`` and reported running there (4 CPUs per node in these tests)."""
    spec = VMSpec(name=name, vcpus=vcpus, memory_mib=256, ha=HAPolicy.model_validate(ha))
    await store.put(KEYS.vm(name), encode(spec))
    await store.put(KEYS.placement(name), encode(Placement(node=node, epoch=1)))
    status = VMStatus(vm=name, node=node, epoch=1, state=VMState.RUNNING)
    await store.put(KEYS.status(name), encode(status))


def ctx(store: MemoryStore) -> ApiContext:
    return ApiContext(store=store, keys=KEYS, node="n1")


async def test_n_plus_1_holds_when_each_node_s_vms_fit_on_the_others(store: MemoryStore) -> None:
    await add_node(store, "n1")
    await add_node(store, "n2")
    await run(store, "big", "n1", 3)
    await run(store, "small", "n2", 1)
    found = await failover_capacity(ctx(store))
    assert found.ok and "N+1 holds" in found.text


async def test_it_names_the_vms_that_would_find_no_room(store: MemoryStore) -> None:
    await add_node(store, "n1")
    await add_node(store, "n2")
    await add_node(store, "n3", admin=NodeAdminState.PAUSED)  # takes no VM: no room there
    await run(store, "a", "n1", 3)
    await run(store, "b", "n2", 2)
    found = await failover_capacity(ctx(store))
    assert not found.ok
    assert found.short == {"n1": ["a"], "n2": ["b"]}
    assert "if n1 fails: a finds no room; if n2 fails: b finds no room" in found.text


async def test_recovery_order_and_landed_vms_count_and_no_auto_start_is_not_ha(
    store: MemoryStore,
) -> None:
    for n in ("n1", "n2", "n3"):
        await add_node(store, n)
    await run(store, "x", "n1", 2, priority="high")
    await run(store, "y", "n1", 2, priority="low")
    await run(store, "z", "n2", 1)
    await run(store, "w", "n3", 3)
    # n1 lost: x (high) first, on n2 (3 CPUs free, 1 left); then y finds 1 free on n2 and
    # on n3: short. (Had y gone first, or x not been counted on n2, y would fit.)
    found = await failover_capacity(ctx(store))
    assert found.short == {"n1": ["y"]}
    await run(store, "y", "n1", 2, priority=Priority.NO_AUTO_START.value)
    assert (await failover_capacity(ctx(store))).ok


async def test_with_no_ha_vm_running_there_is_nothing_to_fail_over(store: MemoryStore) -> None:
    await add_node(store, "n1")
    o = await overview(ctx(store))
    assert o.capacity.ok and "nothing to fail over" in o.capacity.text
    assert [c.view.name for c in o.cards] == ["n1"]
