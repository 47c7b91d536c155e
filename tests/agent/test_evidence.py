"""Safety rule 5's evidence, from what each member answered: which answers let a node whose
keepalives fail keep its VMs, and for how long after the question was asked."""

from __future__ import annotations

from hvcluster.agent.evidence import Evidence, members_of, seek
from hvcluster.store.base import Member, StoreHealth
from hvcluster.store.health import nobody_can_act, nobody_leads
from hvcluster.store.memory_store import MemoryStore


def answered(id_: int, leader: int) -> Member:
    return Member(f"m{id_}", id_, (), reachable=True, leader_id=leader)


def refused(id_: int) -> Member:
    return Member(f"m{id_}", id_, (), reachable=False, refused=True)


def timed_out(id_: int) -> Member:
    return Member(f"m{id_}", id_, (), reachable=False, refused=False)


def judge(*members: Member) -> tuple[bool, bool]:
    health = StoreHealth(members=members)
    return nobody_can_act(health), nobody_leads(health)


def test_every_member_down_or_leaderless_is_the_strong_evidence() -> None:
    assert judge(refused(1), refused(2), refused(3)) == (True, True)
    assert judge(answered(1, 0), refused(2), answered(3, 0)) == (True, True)
    # a survivor still naming the leader that crashed: that leader cannot lead
    assert judge(answered(1, 2), refused(2), refused(3)) == (True, True)


def test_a_member_that_times_out_may_be_a_frozen_leader() -> None:
    # a majority is down: no quorum, but the silent one may lead again when it resumes
    assert judge(timed_out(1), refused(2), refused(3)) == (True, False)
    # members restarting after all crashed time out until they have a quorum: nothing
    assert judge(timed_out(1), timed_out(2), refused(3)) == (False, False)


def test_a_member_that_follows_a_live_leader_is_no_evidence() -> None:
    assert judge(answered(1, 1), refused(2), refused(3)) == (False, False)  # it leads
    assert judge(answered(1, 3), refused(2), timed_out(3)) == (False, False)
    assert judge() == (False, False)


def test_how_long_each_kind_of_evidence_feeds() -> None:
    strong = Evidence(reachable=0, members=3, nobody_can_act=True, nobody_leads=True)
    majority = Evidence(reachable=1, members=3, nobody_can_act=True, nobody_leads=False)
    none = Evidence(reachable=1, members=3, nobody_can_act=False, nobody_leads=False)
    assert strong.feeds_until(100.0, fence_after=3.0, lease_ttl=4.0) == 104.0
    assert majority.feeds_until(100.0, fence_after=3.0, lease_ttl=4.0) == 103.0
    assert none.feeds_until(100.0, fence_after=3.0, lease_ttl=4.0) is None
    assert "none of the 3" in strong.describe() and "may follow" in none.describe()


class Endpoints(MemoryStore):
    """No member answers: etcd's member list is unknown, only the endpoints given."""

    def __init__(self, members: tuple[Member, ...]) -> None:
        super().__init__()
        self.members = members

    async def health(self) -> StoreHealth:
        return StoreHealth(members=self.members)


async def test_fewer_endpoints_than_members_prove_nothing_of_the_others() -> None:
    """An agent given 3 of 5 members' endpoints, all refused: the 2 others may lead."""
    down = tuple(Member(f"https://m{i}:2379", 0, (), reachable=False, refused=True) for i in "abc")
    store = Endpoints(down)
    assert (await seek(store, 1.0)).nobody_leads  # all the members there are, as far as known
    known = await seek(store, 1.0, known=5)
    assert not known.nobody_leads and not known.nobody_can_act
    assert await members_of(store, 1.0) == 0  # no member list: nothing learnt
    assert await members_of(MemoryStore(), 1.0) == 1
