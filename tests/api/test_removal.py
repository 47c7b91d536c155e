"""Removing a volume or a switch in a cluster of thousands of VMs (etcd allows 128 compares
in a txn): checked against every spec, committed against all of them with one compare."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest

from hvcluster.api import volumes
from hvcluster.api.context import ApiContext
from hvcluster.api.node_reported import users_of
from hvcluster.api.removal import remove_unused
from hvcluster.cli.volume_cmd import place_marker
from hvcluster.lab.etcd import EtcdCluster
from hvcluster.models.base import encode
from hvcluster.models.errors import Conflict
from hvcluster.models.storage import Volume
from hvcluster.models.vm import Disk, Nic, VMSpec
from hvcluster.store.base import Compare, Op, Put, Store, TxnResult
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import KEYS, spec
from tests.etcd_fixtures import etcd_session

__all__ = ["etcd_session"]


async def add_vms(store: Store, keys: Keys, count: int, **fields: object) -> None:
    """``count`` VM specs (vm-0000...), 100 to a txn, as the API would store them."""
    for start in range(0, count, 100):
        ops: Sequence[Op] = [
            Put(keys.vm(f"vm-{i:04}"), encode(VMSpec(name=f"vm-{i:04}", **fields)))
            for i in range(start, min(count, start + 100))
        ]
        await store.txn([], ops)


async def add_volume(store: Store, keys: Keys, name: str = "csv1") -> None:
    await store.put(keys.volume(name), encode(Volume(name=name, path=f"/srv/{name}", id="a" * 32)))


def uses_volume(name: str) -> bytes:
    return encode(VMSpec(name=name, disks=[Disk(volume="csv1", path=f"{name}/root.qcow2")]))


async def remove_volume(ctx: ApiContext) -> None:
    await remove_unused(ctx, "volume", ctx.keys.volume("csv1"), "csv1", users_of(volumes.uses))


@pytest.fixture(params=["memory", "etcd"])
async def ctx(request: pytest.FixtureRequest) -> AsyncIterator[ApiContext]:
    store: Store
    if request.param == "memory":
        store = MemoryStore()
    else:
        cluster: EtcdCluster = request.getfixturevalue("etcd_session")
        store = EtcdStore(cluster.endpoints)
    try:
        yield ApiContext(store=store, keys=Keys(f"t{uuid.uuid4().hex[:8]}"), node="n1")
    finally:
        await store.close()


async def test_a_volume_among_8000_vms_is_removed_when_unused(
    api: httpx.AsyncClient, store: MemoryStore, tmp_path: Path
) -> None:
    root = tmp_path / "csv1"
    root.mkdir()
    place_marker(root)  # as an admin prepares a volume: 'hvc volume mark'
    made = await api.post("/volumes", json={"name": "csv1", "path": str(root)})
    assert made.status_code == 201, made.text
    await add_vms(store, KEYS, 8000)
    disk = {"volume": "csv1", "path": "a.qcow2", "size_gib": 1}
    assert (await api.post("/vms", json=spec("db", disks=[disk]))).status_code == 201
    used = await api.delete("/volumes/csv1")
    assert used.status_code == 409 and "used by VM(s) db;" in used.json()["error"], used.text

    assert (await api.delete("/vms/db")).status_code == 202
    gone = await api.delete("/volumes/csv1")
    assert gone.status_code == 200, gone.text
    assert await store.get(KEYS.volume("csv1")) is None


async def test_a_switch_among_8000_vms_is_removed_when_unused(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    assert (
        await api.post("/switches", json={"name": "lan", "type": "internal"})
    ).status_code == 201
    nic = Nic(switch="lan", mac="52:54:00:00:00:01")
    await add_vms(store, KEYS, 8000)
    await store.put(KEYS.vm("vm-7999"), encode(VMSpec(name="vm-7999", nics=[nic])))
    used = await api.delete("/switches/lan")
    assert used.status_code == 409 and "vm-7999" in used.json()["error"], used.text
    await store.put(KEYS.vm("vm-7999"), encode(VMSpec(name="vm-7999")))
    assert (await api.delete("/switches/lan")).status_code == 200


async def test_removal_past_etcds_txn_limit_on_both_stores(ctx: ApiContext) -> None:
    """300 VMs: more than the 128 compares etcd allows in one txn."""
    await add_volume(ctx.store, ctx.keys)
    await add_vms(ctx.store, ctx.keys, 300)
    await ctx.store.put(ctx.keys.vm("vm-0150"), uses_volume("vm-0150"))
    with pytest.raises(Conflict, match="used by VM\\(s\\) vm-0150;"):
        await remove_volume(ctx)
    assert await ctx.store.get(ctx.keys.volume("csv1")) is not None

    await ctx.store.put(ctx.keys.vm("vm-0150"), encode(VMSpec(name="vm-0150")))
    await remove_volume(ctx)
    assert await ctx.store.get(ctx.keys.volume("csv1")) is None


async def test_a_refusal_names_some_users_and_counts_the_rest(ctx: ApiContext) -> None:
    await add_volume(ctx.store, ctx.keys)
    for i in range(12):
        await ctx.store.put(ctx.keys.vm(f"u{i:02}"), uses_volume(f"u{i:02}"))
    with pytest.raises(Conflict, match=r"u00, u01, .*u09 and 2 more; delete them first"):
        await remove_volume(ctx)


class ChangingStore(MemoryStore):
    """Another writer commits ``changes`` just before each of our next commits that
    compares a prefix (between the removal's check and its commit)."""

    def __init__(self, changes: list[tuple[str, bytes]]) -> None:
        super().__init__()
        self.changes = changes
        self.commits = 0

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        if any(c.prefix for c in compares):
            self.commits += 1
            if self.changes:
                key, value = self.changes.pop(0)
                await self.put(key, value)
        return await super().txn(compares, success, failure)


async def test_a_vm_changed_between_check_and_commit_means_check_again() -> None:
    keys = Keys("t")
    store = ChangingStore([(keys.vm("vm-0007"), encode(VMSpec(name="vm-0007", vcpus=2)))])
    ctx = ApiContext(store=store, keys=keys, node="n1")
    await add_volume(store, keys)
    await add_vms(store, keys, 200)
    await remove_volume(ctx)
    assert store.commits == 2, "the first commit failed (a spec changed), the second held"
    assert await store.get(keys.volume("csv1")) is None
    await store.close()


async def test_a_vm_created_on_the_volume_between_check_and_commit_stops_it() -> None:
    keys = Keys("t")
    store = ChangingStore([(keys.vm("late"), uses_volume("late"))])
    ctx = ApiContext(store=store, keys=keys, node="n1")
    await add_volume(store, keys)
    await add_vms(store, keys, 200)
    with pytest.raises(Conflict, match="used by VM\\(s\\) late;"):
        await remove_volume(ctx)
    assert await store.get(keys.volume("csv1")) is not None, "the volume stays: late uses it"
    await store.close()


async def test_vm_specs_that_keep_changing_end_in_a_refusal() -> None:
    keys = Keys("t")
    churn = [(keys.vm("vm-0001"), encode(VMSpec(name="vm-0001", vcpus=n))) for n in range(1, 9)]
    store = ChangingStore(churn)
    ctx = ApiContext(store=store, keys=keys, node="n1")
    await add_volume(store, keys)
    await add_vms(store, keys, 10)
    with pytest.raises(Conflict, match="kept changing"):
        await remove_volume(ctx)
    assert await store.get(keys.volume("csv1")) is not None
    await store.close()


async def test_an_unreadable_spec_stops_a_removal(ctx: ApiContext) -> None:
    await add_volume(ctx.store, ctx.keys)
    await ctx.store.put(ctx.keys.vm("broken"), b"{not json")
    with pytest.raises(Conflict, match="cannot tell whether VM\\(s\\) broken use it"):
        await remove_volume(ctx)
    assert await ctx.store.get(ctx.keys.volume("csv1")) is not None
