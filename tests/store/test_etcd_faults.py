"""The etcd backend under real faults: cut connections, an etcd restarted or killed, endpoints
that do not answer. Watches resume with no gap and no duplicate; errors are StoreErrors."""

from __future__ import annotations

import asyncio

import pytest

from hvcluster.lab.etcd import EtcdCluster, free_ports
from hvcluster.models.errors import InvalidInput, LeaseLost, StoreError, StoreUnavailable
from hvcluster.store.base import EventType, WatchEvent
from hvcluster.store.etcd import EtcdStore
from tests.store.conftest import Collector
from tests.store.proxy import TcpProxy

pytestmark = pytest.mark.etcd
PREFIX = "/faults/"


def assert_exactly(events: list[WatchEvent], revisions: list[int]) -> None:
    got = [e.mod_revision for e in events]
    assert got == revisions, f"gap or duplicate: watched {got}, wrote {revisions}"


@pytest.mark.timeout(60)
async def test_a_watch_resumes_after_its_connection_is_cut(etcd_session: EtcdCluster) -> None:
    proxy = await TcpProxy(etcd_session.endpoints[0]).start()
    watched = EtcdStore([proxy.endpoint], timeout=5)
    writer = EtcdStore(etcd_session.endpoints, timeout=5)
    prefix = f"{PREFIX}cut/"
    try:
        start = await writer.revision() + 1
        watch = Collector(watched, prefix, start)
        revs = [await writer.put(f"{prefix}{i}", b"x") for i in range(5)]
        await watch.wait_for(lambda evs: len(evs) >= 5)
        for round_ in range(2):
            await proxy.cut()
            revs += [await writer.put(f"{prefix}{round_}/{i}", b"y") for i in range(5)]
            await watch.wait_for(lambda evs, n=len(revs): len(evs) >= n)
        # A duplicate would come before a change made after them all: wait for that one.
        revs.append(await writer.put(f"{prefix}last", b"z"))
        await watch.wait_for(lambda evs, last=revs[-1]: any(e.mod_revision == last for e in evs))
        await watch.stop()
        assert_exactly(watch.events, revs)
        assert proxy.connections >= 3, "the watch did reconnect"
    finally:
        await watched.close()
        await writer.close()
        await proxy.close()


@pytest.mark.timeout(60)
async def test_a_write_on_a_cut_connection_is_a_store_error(etcd_session: EtcdCluster) -> None:
    proxy = await TcpProxy(etcd_session.endpoints[0]).start()
    store = EtcdStore([proxy.endpoint], timeout=1.5)
    try:
        await store.put(f"{PREFIX}w", b"1")
        await proxy.close()  # no more connections at all
        with pytest.raises(StoreUnavailable):
            await store.put(f"{PREFIX}w", b"2")
        with pytest.raises(StoreUnavailable):
            await store.get(f"{PREFIX}w")
    finally:
        await store.close()


@pytest.mark.timeout(90)
async def test_a_watch_resumes_across_etcd_restarts(etcd_private: EtcdCluster) -> None:
    member = etcd_private.members[0]
    store = EtcdStore(etcd_private.endpoints, timeout=10)
    prefix = f"{PREFIX}restart/"
    try:
        lease = await store.grant(30)
        start = await store.revision() + 1
        watch = Collector(store, prefix, start)
        revs = [await store.put(f"{prefix}a{i}", b"x") for i in range(5)]
        await watch.wait_for(lambda evs: len(evs) >= 5)

        member.stop()  # SIGTERM
        with pytest.raises(StoreUnavailable):
            await EtcdStore(etcd_private.endpoints, timeout=1).get(f"{prefix}a0")
        member.start()
        revs += [await store.put(f"{prefix}b{i}", b"y") for i in range(5)]
        await watch.wait_for(lambda evs: len(evs) >= 10, timeout=20)

        member.kill()  # SIGKILL: a crash
        member.start()
        revs += [await store.put(f"{prefix}c{i}", b"z") for i in range(3)]
        revs.append(await store.put(f"{prefix}leased", b"l", lease.id))
        await watch.wait_for(lambda evs: len(evs) >= 14, timeout=20)
        await store.delete(f"{prefix}a0")
        revs.append(await store.revision())
        events = await watch.wait_for(lambda evs: len(evs) >= 15, timeout=20)
        assert events[-1].type == EventType.DELETE
        # A duplicate would come before a change made after them all: wait for that one.
        revs.append(await store.put(f"{prefix}last", b"z"))
        await watch.wait_for(lambda evs, last=revs[-1]: any(e.mod_revision == last for e in evs))
        await watch.stop()
        assert_exactly(watch.events, revs)
        assert await store.keepalive(lease.id) == 30, "leases survive a restart"
    finally:
        await store.close()


@pytest.mark.timeout(30)
async def test_an_unreachable_store_fails_fast_with_store_unavailable() -> None:
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    store = EtcdStore([dead], timeout=0.5)
    try:
        for call in (
            store.get("/x"),
            store.put("/x", b"1"),
            store.grant(5),
            store.keepalive(1),
            store.revision(),
        ):
            with pytest.raises(StoreUnavailable, match=r"did not answer|cannot connect"):
                async with asyncio.timeout(5):
                    await call
        health = await store.health(timeout=0.5)
        assert [m.reachable for m in health.members] == [False]
        assert health.members[0].error
    finally:
        await store.close()


@pytest.mark.timeout(30)
async def test_it_fails_over_to_an_endpoint_that_answers(etcd_session: EtcdCluster) -> None:
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    store = EtcdStore([dead, f"http://{etcd_session.endpoints[0]}"], timeout=4.0)
    try:
        rev = await store.put(f"{PREFIX}failover", b"ok")
        kv = await store.get(f"{PREFIX}failover")
        assert kv is not None and kv.mod_revision == rev
        watch = Collector(store, f"{PREFIX}failover", rev)
        await watch.wait_for(lambda evs: len(evs) == 1)
        await watch.stop()
    finally:
        await store.close()


async def test_every_refusal_is_a_store_error(etcd_session: EtcdCluster) -> None:
    store = EtcdStore(etcd_session.endpoints)
    try:
        with pytest.raises(LeaseLost):
            await store.put(f"{PREFIX}nolease", b"x", lease=0x7EADBEEF)
        with pytest.raises(LeaseLost):
            await store.keepalive(0x7EADBEEF)
        with pytest.raises(LeaseLost):
            await store.lease_ttl(0x7EADBEEF)
        await store.revoke(0x7EADBEEF)  # gone already: fine
        with pytest.raises(StoreError):
            await store.compact(10**9)
        with pytest.raises(InvalidInput, match="endpoints"):
            EtcdStore(["https://127.0.0.1:2379"])
    finally:
        await store.close()


async def test_health_of_one_member(etcd_session: EtcdCluster) -> None:
    store = EtcdStore(etcd_session.endpoints)
    try:
        health = await store.health()
    finally:
        await store.close()
    (member,) = health.members
    assert member.name == health.leader == etcd_session.members[0].name
    assert member.reachable and member.is_leader
    assert member.leader_id == member.id != 0
    assert member.client_urls == (etcd_session.endpoints[0],)
    assert member.latency_ms is not None and member.db_size and member.raft_term
