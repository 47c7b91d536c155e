"""An agent given only some of etcd's members as endpoints (a config written before a member
was added, or on purpose): it sends every request to the endpoints it was given, and reads
etcd's own member list only to ask every member about health (``hvc store check``, Safety
rule 5's evidence). So with one of its two endpoints dead it carries on through the other,
within a keepalive or two, and its health check still sees all three members."""

from __future__ import annotations

import time

import pytest

from hvcluster.agent.evidence import members_of, seek
from hvcluster.models.errors import StoreUnavailable
from hvcluster.store.etcd import EtcdStore
from tests.etcd_fixtures import running_etcd

pytestmark = [pytest.mark.etcd, pytest.mark.slow, pytest.mark.timeout(120)]

KEEPALIVE_S = 0.45  # a keepalive's own deadline, as the agent's (0.9 x its 0.5 s interval)


async def test_given_two_of_three_members_it_carries_on_when_one_dies() -> None:
    with running_etcd(3) as cluster:
        # the first endpoint dies; not the leader (that is an election: test_etcd_leader)
        leader = await leader_of(cluster.endpoints)
        victim = next(m for m in cluster.members if m.name != leader)
        other, third = (m for m in cluster.members if m is not victim)
        given = [victim.endpoint, other.endpoint]
        store = EtcdStore(given, timeout=5.0)
        try:
            lease = await store.grant(10)
            await store.keepalive(lease.id, timeout=KEEPALIVE_S)  # talking to the first
            assert await members_of(store, 2.0) == 3, "etcd's member list, not our endpoints"
            assert store.endpoints == given

            victim.kill()
            killed = time.monotonic()
            confirmed, failed = None, 0
            while confirmed is None and time.monotonic() - killed < 5.0:
                try:
                    await store.keepalive(lease.id, timeout=KEEPALIVE_S)
                    confirmed = time.monotonic() - killed
                except StoreUnavailable:
                    failed += 1
            assert confirmed is not None, "no keepalive confirmed through the other endpoint"
            # within two keepalive intervals: well inside fence_after
            assert confirmed < 2 * KEEPALIVE_S / 0.9, (confirmed, failed)
            await store.put("/fewer/k", b"v")
            kv = await store.get("/fewer/k")
            assert kv is not None and kv.value == b"v"

            health = await store.health()
            by_name = {m.name: m for m in health.members}
            assert set(by_name) == {m.name for m in cluster.members}
            dead = by_name[victim.name]
            assert dead.refused and not dead.reachable
            assert by_name[third.name].reachable, "a member we were not given is asked too"
            evidence = await seek(store, 2.0, known=3)
            assert not evidence.nobody_can_act, "two of three run with a leader"
            print(
                f"\none of two endpoints killed: a keepalive confirmed after {confirmed:.2f}s "
                f"({failed} failed before)"
            )
        finally:
            await store.close()


async def leader_of(endpoints: list[str]) -> str | None:
    store = EtcdStore(endpoints, timeout=5.0)
    try:
        return (await store.health()).leader
    finally:
        await store.close()
