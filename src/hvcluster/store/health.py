"""Reading a :class:`StoreHealth`: does the store have a quorum, who is cut off."""

from __future__ import annotations

from collections import Counter

from hvcluster.store.base import StoreHealth


def quorum_size(members: int) -> int:
    """How many members make a majority of ``members``."""
    return members // 2 + 1


def followers_of_leader(health: StoreHealth) -> int:
    """How many reachable members follow the same leader (the largest such group)."""
    leaders = Counter(m.leader_id for m in health.members if m.reachable and m.leader_id)
    return max(leaders.values(), default=0)


def has_quorum(health: StoreHealth) -> bool:
    """True when a majority of the members answered and follow one leader."""
    return bool(health.members) and followers_of_leader(health) >= quorum_size(len(health.members))


def nobody_can_act(health: StoreHealth) -> bool:
    """Positive evidence that no one can change the store: a majority of the members
    answered and none of them has a leader (ARCHITECTURE.md, safety rule 5)."""
    answered = [m for m in health.members if m.reachable]
    return (
        bool(health.members)
        and len(answered) >= quorum_size(len(health.members))
        and all(m.leader_id == 0 for m in answered)
    )
