"""One etcd member frozen (SIGSTOP: its host still accepts and acknowledges TCP, nothing
answers) must not stall a node's keepalives: a keepalive with its own deadline times out on
that member and the next one goes to another member, well within ``fence_after``. Without
it, every node talking to the frozen member fenced itself although etcd had quorum (found by
``hvc lab chaos``)."""

from __future__ import annotations

import time

import pytest

from hvcluster.models.errors import StoreUnavailable
from hvcluster.store.etcd import EtcdStore
from tests.etcd_fixtures import running_etcd

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
            leader = (await store.health()).leader
            frozen = next(m for m in cluster if m.name == leader)
            if which == "first":
                frozen = cluster.members[0]
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
