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
    """Positive evidence that no one can change the store (docs/architecture.md, safety rule 5):
    a majority of the members each either answered and has no leader, or was refused by its
    reachable host (connection refused: its etcd is not running, so it cannot vote), and no
    member that answered follows a leader. A timeout is never evidence (a frozen member and
    a cut link look the same), and neither is a failed TLS handshake (the member runs)."""
    members = health.members
    answered = [m for m in members if m.reachable]
    refused = [m for m in members if not m.reachable and m.refused]
    dead = {m.id for m in refused}
    leaderless = [m for m in answered if m.leader_id == 0 or m.leader_id in dead]
    return (
        bool(members)
        and len(leaderless) == len(answered)
        and len(leaderless) + len(refused) >= quorum_size(len(members))
    )


def nobody_leads(health: StoreHealth) -> bool:
    """Stronger than :func:`nobody_can_act`: *every* member was refused by its host or
    answered with no live leader, so no member is a leader now (a leader names itself). Any
    leader from now on must win a new election, and etcd's new leader gives every lease a
    full TTL before it may revoke one (its lessor is promoted only once the leader applied
    its first entry, and a promotion renews every lease): no lease can vanish within its TTL
    of this answer (docs/architecture.md, Safety rule 5)."""
    members = health.members
    dead = {m.id for m in members if not m.reachable and m.refused}
    return bool(members) and all(
        (not m.reachable and m.refused)
        or (m.reachable and (m.leader_id == 0 or m.leader_id in dead))
        for m in members
    )
