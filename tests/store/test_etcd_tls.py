"""etcd with TLS and client-certificate auth: who is let in, what a client that is not let in
is told (a StoreError naming the reason, within its deadline: never a hang), and the "is it
me or etcd?" evidence over TLS (a refused connection counts, a timeout and a TLS failure do
not). The store contract itself runs over TLS too (``h`` fixture, ``etcd-tls``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hvcluster.host.pki import Authority
from hvcluster.lab.etcd import EtcdCluster, free_ports
from hvcluster.models.errors import InvalidInput, StoreError
from hvcluster.store.base import Member, StoreHealth
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.etcd_conn import EtcdTls
from hvcluster.store.health import has_quorum, nobody_can_act
from tests.etcd_fixtures import running_etcd, store_tls
from tests.waiting import wait_for

pytestmark = pytest.mark.etcd


def tls_of(cluster: EtcdCluster) -> EtcdTls:
    tls = store_tls(cluster)
    assert tls is not None
    return tls


async def refusal(store: EtcdStore, budget: float = 15.0) -> str:
    """The StoreError a put gets, within ``budget`` seconds (a hang fails the test)."""
    try:
        with pytest.raises(StoreError) as caught:
            async with asyncio.timeout(budget):
                await store.put("/tls/x", b"1")
        return str(caught.value)
    finally:
        await store.close()


async def test_a_client_with_the_cluster_certificate_reads_and_writes(
    etcd_tls_session: EtcdCluster,
) -> None:
    store = EtcdStore(etcd_tls_session.endpoints, timeout=5, tls=tls_of(etcd_tls_session))
    try:
        await store.put("/tls/ok", b"yes")
        kv = await store.get("/tls/ok")
        assert kv is not None and kv.value == b"yes"
        health = await store.health()
        assert has_quorum(health) and health.members[0].reachable
        assert health.members[0].client_urls == (etcd_tls_session.endpoints[0],)
    finally:
        await store.close()


@pytest.mark.timeout(60)
async def test_clients_without_an_accepted_certificate_are_refused_clearly(
    etcd_tls_session: EtcdCluster, tmp_path: Path
) -> None:
    endpoints = etcd_tls_session.endpoints
    good = tls_of(etcd_tls_session)
    stranger = Authority(tmp_path / "other").issue("mallory")

    no_cert = await refusal(EtcdStore(endpoints, timeout=2, tls=EtcdTls(good.ca)))
    assert "client certificate" in no_cert and endpoints[0] in no_cert

    other_ca = EtcdTls(good.ca, stranger.cert, stranger.key)
    assert "client certificate" in await refusal(EtcdStore(endpoints, timeout=2, tls=other_ca))

    wrong_trust = EtcdTls(stranger.ca, good.cert, good.key)
    assert "not signed by the CA" in await refusal(EtcdStore(endpoints, timeout=2, tls=wrong_trust))

    assert "expect TLS" in await refusal(EtcdStore(endpoints, timeout=2))

    health = await EtcdStore(endpoints, timeout=2, tls=EtcdTls(good.ca)).health(timeout=1)
    member = health.members[0]
    assert not member.reachable and "client certificate" in member.error
    assert not member.refused, "a TLS refusal means the member runs: it is no evidence"


async def test_tls_settings_that_cannot_work_are_refused_naming_the_field(
    tmp_path: Path,
) -> None:
    with pytest.raises(InvalidInput) as caught:
        EtcdStore(["https://127.0.0.1:2379"])
    assert caught.value.field == "endpoints" and "CA" in str(caught.value)
    ca = Authority(tmp_path / "pki").ensure_ca()
    with pytest.raises(InvalidInput) as caught:
        EtcdStore(["http://127.0.0.1:2379"], tls=EtcdTls(ca))
    assert caught.value.field == "endpoints"
    with pytest.raises(InvalidInput) as caught:
        EtcdStore(["127.0.0.1:2379"], tls=EtcdTls(tmp_path / "missing.crt"))
    assert caught.value.field == "ca" and "missing.crt" in str(caught.value)
    with pytest.raises(InvalidInput) as caught:
        EtcdStore(["127.0.0.1:2379"], tls=EtcdTls(ca, cert=ca))
    assert caught.value.field == "key"
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(InvalidInput) as caught:
        EtcdStore(["127.0.0.1:2379"], tls=EtcdTls(ca, cert=ca, key=tmp_path / "junk.key"))
    assert caught.value.field == "key"


@pytest.mark.timeout(30)
async def test_a_refused_port_is_told_apart_from_a_timeout(tmp_path: Path) -> None:
    files = Authority(tmp_path / "pki").issue("client")
    tls = EtcdTls(files.ca, files.cert, files.key)
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    text = await refusal(EtcdStore([dead], timeout=1, tls=tls))
    assert "connection refused" in text
    store = EtcdStore([dead], timeout=1, tls=tls)
    try:
        # A refusal is known at once: it need not wait out the 10 s given to each member.
        async with asyncio.timeout(5):
            health = await store.health(timeout=10)
    finally:
        await store.close()
    assert [(m.reachable, m.refused) for m in health.members] == [(False, True)]


def member(name: str, *, leader: int | None = None, refused: bool = False) -> Member:
    return Member(
        name=name, id=hash(name), client_urls=(), reachable=leader is not None,
        leader_id=leader, refused=refused,
    )  # fmt: skip


def test_evidence_counts_refused_members_and_never_timeouts() -> None:
    def evidence(*members: Member) -> bool:
        return nobody_can_act(StoreHealth(members))

    timed_out = member
    assert evidence(member("a", leader=0), member("b", refused=True), timed_out("c"))
    assert evidence(member("a", refused=True), member("b", refused=True), timed_out("c"))
    assert not evidence(member("a", leader=0), timed_out("b"), timed_out("c"))
    assert not evidence(member("a", leader=7), member("b", refused=True), member("c", refused=True))
    assert not evidence(member("a", leader=0), member("b", leader=0), member("c", leader=7))
    assert not evidence(member("a", refused=True), timed_out("b"), timed_out("c"))
    assert not evidence()


def test_a_member_following_a_leader_whose_process_is_gone_is_leaderless() -> None:
    """For a second or two after its leader was killed, a surviving member still names it:
    a leader refused by its own host is not running and cannot lead (nor commit anything)."""

    def evidence(*members: Member) -> bool:
        return nobody_can_act(StoreHealth(members))

    dead_leader = member("a", refused=True)
    assert evidence(dead_leader, member("b", refused=True), member("c", leader=dead_leader.id))
    # a leader that merely timed out might be running on the far side of a cut: no evidence
    assert not evidence(member("a"), member("b", refused=True), member("c", leader=hash("a")))
    # a member following a live leader (not refused) is never evidence
    assert not evidence(dead_leader, member("b", leader=hash("b")), member("c", leader=hash("b")))


async def _health(cluster: EtcdCluster) -> StoreHealth:
    store = EtcdStore(cluster.endpoints, timeout=2, tls=tls_of(cluster))
    try:
        async with asyncio.timeout(15):
            return await store.health(timeout=1)
    finally:
        await store.close()


async def _leaderless(cluster: EtcdCluster, alive: str) -> StoreHealth:
    """Health once the member ``alive`` has noticed it has no leader (an election timeout)."""

    async def leaderless() -> StoreHealth | None:
        h = await _health(cluster)
        survivor = next(m for m in h.members if m.name == alive)
        return h if survivor.leader_id == 0 else None

    health: StoreHealth = await wait_for(leaderless, 30, f"{alive} without a leader", every=0.3)
    return health


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_over_tls_crashed_members_are_evidence_and_frozen_ones_are_not() -> None:
    with running_etcd(3, tls=True) as cluster:
        first, second, third = cluster.members
        h = await _health(cluster)
        assert has_quorum(h) and not nobody_can_act(h)

        second.kill()
        third.kill()
        h = await _leaderless(cluster, first.name)
        assert {m.name: m.refused for m in h.members} == {
            first.name: False, second.name: True, third.name: True,
        }  # fmt: skip
        assert nobody_can_act(h), "crashed members cannot vote: nobody can act"

        second.start(wait=False)
        third.start(wait=False)
        for m in cluster:
            m.wait_healthy(30)
        assert has_quorum(await _health(cluster))

        second.pause()
        third.pause()
        try:
            h = await _leaderless(cluster, first.name)
            assert [m.reachable for m in h.members].count(True) == 1
            assert not any(m.refused for m in h.members)
            assert not nobody_can_act(h), "a frozen member may still vote: no evidence"
        finally:
            second.resume()
            third.resume()
