"""etcd's member API through the store: a learner added, started, promoted once caught up,
removed; on a real etcd, and on the memory store's fake of it."""

from __future__ import annotations

import asyncio
import time

import pytest

from hvcluster.lab.etcd import HOST, EtcdProcess, free_ports
from hvcluster.models.errors import NotFound, StoreError
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.memory_store import MemoryStore
from tests.etcd_fixtures import running_etcd

pytestmark = pytest.mark.timeout(90)


async def test_a_learner_joins_is_promoted_once_caught_up_and_is_removed() -> None:
    with running_etcd(1) as cluster:
        first = cluster.members[0]
        client_port, peer_port = free_ports(2)
        peer = f"http://{HOST}:{peer_port}"
        store = EtcdStore(cluster.endpoints)
        joiner: EtcdProcess | None = None
        try:
            await store.put("/t/before", b"1")
            added = await store.add_member([peer])
            assert added.learner and added.peer_urls == (peer,)
            listed = {m.id: m for m in await store.members()}
            assert listed[added.id].learner and listed[added.id].name == ""
            # Not started: it cannot have caught up, and etcd refuses to promote it.
            with pytest.raises(StoreError, match="in sync with leader"):
                await store.promote_member(added.id)
            joiner = EtcdProcess(
                "joiner",
                cluster.base_dir / "joiner",
                client_port,
                peer_port,
                f"{first.name}={first.peer_url},joiner={peer}",
                first.cluster_token,
                cluster_state="existing",
            )
            joiner.start()
            promoted = False
            end = time.monotonic() + 30
            while not promoted and time.monotonic() < end:
                try:
                    await store.promote_member(added.id)
                    promoted = True
                except StoreError:
                    await asyncio.sleep(0.2)
            assert promoted
            listed = {m.id: m for m in await store.members()}
            assert not listed[added.id].learner and listed[added.id].name == "joiner"
            async with EtcdStore([joiner.endpoint]) as direct:
                got = await direct.get("/t/before")
                assert got is not None and got.value == b"1"
            # etcd refuses to remove a voter unless the members left have been connected
            # for its health interval (5 s): just after the promotion it says "unhealthy
            # cluster", and the store asks again until that has passed.
            await store.remove_member(added.id)
            assert added.id not in {m.id for m in await store.members()}
            with pytest.raises(NotFound, match="not found"):
                await store.remove_member(added.id)
        finally:
            if joiner is not None:
                joiner.stop()
            await store.close()


async def test_the_memory_store_fakes_the_same_rules() -> None:
    store = MemoryStore()
    (me,) = await store.members()
    added = await store.add_member(["https://10.0.0.4:2380"])
    with pytest.raises(StoreError, match="already has peer URL"):
        await store.add_member(["https://10.0.0.4:2380"])
    with pytest.raises(StoreError, match="in sync with leader"):
        await store.promote_member(added.id)
    store.catch_up(added.id, "n4")
    await store.promote_member(added.id)
    assert [(m.name, m.learner) for m in await store.members()] == [(me.name, False), ("n4", False)]
    await store.remove_member(added.id)
    with pytest.raises(NotFound):
        await store.remove_member(added.id)
