"""The leader promotes a joined etcd learner by itself once it has caught up and the cluster
wants another voter; etcd's refusals are said and asked again with a doubling backoff; a
learner that is to stay one is said once, with why."""

from __future__ import annotations

import time

from hvcluster.clock import ManualClock
from hvcluster.controller.promotion import FIRST_RETRY_S, MAX_RETRY_S, Promoter
from hvcluster.models.base import encode
from hvcluster.models.join import IssuedCert
from hvcluster.models.node import Capacity, Node
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from hvcluster.store.promotion import joined_learners, promote_if_due

KEYS = Keys("c")


async def join(store: MemoryStore, node: str, address: str) -> int:
    """What ``POST /join`` leaves: a waiting learner promoted first when this host makes the
    cluster want another voter (etcd 3.4 takes one learner at a time, as the memory store
    does), then a learner of its own, and the certificate record naming it."""
    for learner in await joined_learners(store, KEYS):
        await promote_if_due(store, KEYS, learner.node, learner.member.id, joining=node)
    added = await store.add_member([f"https://{address}:2380"], learner=True)
    issued = IssuedCert(node=node, serial="01", issued_at=time.time(), etcd_member_id=added.id)
    await store.put(KEYS.issued_cert(node), encode(issued))
    return added.id


async def register(store: MemoryStore, node: str) -> None:
    record = Node(name=node, address=node, capacity=Capacity(cpus=4, memory_mib=4096))
    await store.put(KEYS.node(node), encode(record))


async def test_a_learner_is_promoted_by_the_leader_once_caught_up() -> None:
    store, clock = MemoryStore(), ManualClock()
    said: list[tuple[str, str, str]] = []

    async def say(kind: str, subject: str, reason: str) -> None:
        said.append((kind, subject, reason))

    promoter = Promoter(store, KEYS, say, lambda: True, clock)
    await register(store, "n1")
    second = await join(store, "n2", "10.0.0.2")
    store.catch_up(second, "n2")
    # 2 hosts want 1 voter: n2 stays a learner, said once
    assert [v.voting for v in await promoter.cycle()] == [False]
    await promoter.cycle()
    assert said == [("etcd.member.learner", "node/n2", said[0][2])]
    assert "stays a learner: 1 voting member(s) already, as 2 host(s) want" in said[0][2]
    # A 3rd host joins: the cluster wants 3 voters, so its join promotes n2 (caught up)
    # before adding n3's learner. n3's etcd has not started yet.
    third = await join(store, "n3", "10.0.0.3")
    assert [m.learner for m in await store.members() if m.id == second] == [False]
    verdicts = await promoter.cycle()
    assert [(v.node, v.promoted, v.retry) for v in verdicts] == [("n3", False, True)]
    refused = [r for k, _, r in said if k == "etcd.member.promotion_refused"]
    assert len(refused) == 1 and "cannot be promoted yet" in refused[0]
    assert f"next try in {FIRST_RETRY_S:.0f}s" in refused[0]
    # Not due again before its backoff: nothing tried
    assert await promoter.cycle() == []
    delays = []
    for _ in range(10):  # the backoff doubles up to its cap
        await clock.advance(MAX_RETRY_S)
        (verdict,) = await promoter.cycle()
        assert verdict.retry
        delays.append(promoter.backoff[third].delay)
    assert delays[:3] == [2 * FIRST_RETRY_S, 4 * FIRST_RETRY_S, 8 * FIRST_RETRY_S]
    assert delays[-1] == MAX_RETRY_S
    store.catch_up(third, "n3")
    await clock.advance(MAX_RETRY_S)
    (verdict,) = await promoter.cycle()
    assert verdict.promoted and "3 voting member(s) for 3 host(s)" in verdict.reason
    assert not any(m.learner for m in await store.members())
    promoted = [s for k, s, _ in said if k == "etcd.member.promoted"]
    assert promoted == ["node/n3"]  # n2's came with n3's join (the API says that one)
    assert await promoter.cycle() == []  # no learner left: nothing to do


async def test_only_the_leader_promotes() -> None:
    store, clock = MemoryStore(), ManualClock()
    said: list[str] = []

    async def say(kind: str, subject: str, reason: str) -> None:
        said.append(kind)

    promoter = Promoter(store, KEYS, say, lambda: False, clock)
    for node in ("n1", "n2"):
        await register(store, node)
    member = await join(store, "n3", "10.0.0.3")
    store.catch_up(member, "n3")
    await promoter._turn()
    assert said == [] and [m.learner for m in await store.members() if m.id == member] == [True]
