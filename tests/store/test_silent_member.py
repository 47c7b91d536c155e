"""One etcd member frozen (SIGSTOP: its host still accepts and acknowledges TCP, nothing
answers) must not stall a node's keepalives: a keepalive with its own deadline times out on
that member and the next one goes to another member, well within ``fence_after``. Without
it, every node talking to the frozen member fenced itself although etcd had quorum (found by
``hvc lab chaos``)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from hvcluster.lab.etcd import EtcdCluster
from hvcluster.lab.processes import stopped
from hvcluster.models.errors import StoreUnavailable
from hvcluster.store.etcd import EtcdStore
from tests.etcd_fixtures import running_etcd
from tests.waiting import wait_for_sync

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

KEEPALIVE_S = 0.5  # a keepalive's own deadline, as the agent's (0.9 x its interval)


@pytest.mark.parametrize("which", ["first", "leader"])
async def test_a_keepalive_moves_on_from_a_frozen_member(which: str) -> None:
    """``first``: the member the store talks to; ``leader``: etcd's leader (where every
    keepalive ends up: the others elect a new one, about a second)."""
    with running_etcd(3) as cluster:
        store = EtcdStore(cluster.endpoints, timeout=5.0)
        try:
            lease = await store.grant(10)
            await store.keepalive(lease.id, timeout=KEEPALIVE_S)  # talking to the first
            health = await store.health()
            frozen = next(m for m in cluster if m.name == health.leader)
            if which == "first":
                frozen = cluster.members[0]
                if frozen.name == health.leader:  # else this would be the leader case
                    await _hand_leadership_away(store, cluster, frozen.name)
            frozen.pause()
            try:
                paused = time.monotonic()
                confirmed, timeouts = None, 0
                while confirmed is None and time.monotonic() - paused < 8.0:
                    try:
                        await store.keepalive(lease.id, timeout=KEEPALIVE_S)
                    except StoreUnavailable:
                        timeouts += 1  # the frozen one, or an election under way
                        continue
                    confirmed = time.monotonic() - paused
                assert confirmed is not None, "no keepalive confirmed with one member frozen"
                if which == "first":
                    assert timeouts >= 1, "the store was not talking to the frozen member"
                # first: one deadline on the frozen member, then another member answers;
                # leader: the others elect a new one first (etcd's election timeout is 1 s,
                # randomised up to 2 s, then the vote): no store deadline may hold it longer
                limit = 3.0 if which == "first" else 6.0
                assert confirmed < limit, f"first keepalive confirmed {confirmed:.1f}s after"
            finally:
                frozen.resume()
        finally:
            await store.close()


async def _hand_leadership_away(store: EtcdStore, cluster: EtcdCluster, name: str) -> None:
    """etcd's own ``move-leader`` to another member, waited for."""
    health = await store.health()
    heir = next(m for m in health.members if m.name != name)
    leader = next(m for m in cluster if m.name == name)
    moving = await asyncio.create_subprocess_exec(
        "etcdctl",
        f"--endpoints={leader.endpoint}",
        "move-leader",
        f"{heir.id:x}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    out, _ = await asyncio.wait_for(moving.communicate(), 10.0)
    assert moving.returncode == 0, f"etcdctl move-leader: {out.decode()}"
    deadline = time.monotonic() + 10.0
    while (await store.health()).leader == name:
        assert time.monotonic() < deadline, f"{name} still etcd's leader after move-leader"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(60)
async def test_a_keepalive_whose_channel_another_drops_fails_as_unavailable(
    etcd_private: EtcdCluster,
) -> None:
    """Keepalives side by side on one frozen member (the agent hedges them): the first to
    time out drops the channel, and gRPC cancels the others on it. That is not our
    cancellation: each fails as an unreachable etcd, never as a cancelled task (which ended
    the agent's keepalive loop: its watchdog fired with etcd healthy)."""
    store = EtcdStore(etcd_private.endpoints, timeout=5.0)
    member = etcd_private.members[0]
    try:
        lease = await store.grant(10)
        await store.keepalive(lease.id, timeout=KEEPALIVE_S)  # the channel connected
        member.pause()
        try:
            assert member.pid is not None
            wait_for_sync(lambda: stopped(member.pid), 5, "etcd stopped")
            first = asyncio.create_task(store.keepalive(lease.id, timeout=KEEPALIVE_S))
            await asyncio.sleep(0.1)
            second = asyncio.create_task(store.keepalive(lease.id, timeout=KEEPALIVE_S))
            results = await asyncio.gather(first, second, return_exceptions=True)
        finally:
            member.resume()
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        await store.keepalive(lease.id, timeout=5.0)  # and the store goes on
    finally:
        await store.close()
