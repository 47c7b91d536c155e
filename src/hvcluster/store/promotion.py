"""Promoting a joined host's etcd learner to a voter: the one rule the controller (which
tries by itself, controller/promotion.py) and ``POST /join/promote`` (which a joining host
asks, api/joining.py) share, so that whichever comes first decides the same way.

A learner added by a join (its ``pki/issued/<node>`` names its member id) is promoted when
the cluster has fewer voters than its hosts want (:func:`~hvcluster.models.join.wanted_voters`:
1, 3 from 3 hosts, 5 from 5); the hosts are the node records and the joined hosts whose agent
has not registered yet. etcd itself refuses a learner that has not caught up with the
leader ("can only promote a learner member which is in sync with leader"): that is a
:attr:`Verdict.retry`, to be asked again later.
"""

from __future__ import annotations

from dataclasses import dataclass

from hvcluster.models.errors import StoreError
from hvcluster.models.event import Say
from hvcluster.models.join import IssuedCert, wanted_voters
from hvcluster.store.base import Membership, Store
from hvcluster.store.keys import Keys
from hvcluster.store.reads import read_prefix


@dataclass(frozen=True)
class Learner:
    node: str
    member: Membership


@dataclass(frozen=True)
class Verdict:
    node: str
    member_id: int
    voting: bool  # it votes now (promoted by this call or before)
    promoted: bool  # this call promoted it
    retry: bool  # not yet, for a reason that passes (etcd: not caught up): ask again
    reason: str


async def say_promoted(say: Say, verdict: Verdict, by: str) -> None:
    """The ``etcd.member.promoted`` event, said alike by whoever promoted (the controller,
    ``POST /join`` for the learner a joining host waits behind, ``POST /join/promote``):
    ``hvc lab join`` and the operator read one sentence, ``by`` saying who."""
    await say("etcd.member.promoted", f"node/{verdict.node}", f"{verdict.reason} ({by})")


async def hosts(store: Store, keys: Keys) -> set[str]:
    """The cluster's hosts: registered nodes, and joined hosts not registered yet."""
    prefix = keys.prefix("nodes")
    nodes = {kv.key[len(prefix) :].split("/")[0] for kv in (await store.range(prefix)).kvs}
    issued = await read_prefix(store, keys.issued_cert(""), IssuedCert)
    return nodes | set(issued.items)


async def joined_learners(store: Store, keys: Keys) -> list[Learner]:
    """The learners a join added (by the member id its certificate record names)."""
    issued = await read_prefix(store, keys.issued_cert(""), IssuedCert)
    by_id = {c.value.etcd_member_id: name for name, c in issued.items.items()}
    return [Learner(by_id[m.id], m) for m in await store.members() if m.learner and m.id in by_id]


async def promote_if_due(
    store: Store, keys: Keys, node: str, member_id: int, joining: str | None = None
) -> Verdict:
    """Promote ``node``'s learner when the cluster wants another voter; the verdict says
    what happened and why (never raises for etcd's refusal: that is a retry). ``joining``:
    a host joining now, counted among the hosts before its certificate is recorded."""

    def verdict(voting: bool, reason: str, promoted: bool = False, retry: bool = False) -> Verdict:
        return Verdict(node, member_id, voting, promoted, retry, reason)

    members = {m.id: m for m in await store.members()}
    member = members.get(member_id)
    if member is None:
        return verdict(False, f"etcd member {node} ({member_id:x}) is not in the cluster")
    if not member.learner:
        return verdict(True, f"etcd member {node} votes")
    voters = sum(1 for m in members.values() if not m.learner)
    count = len(await hosts(store, keys) | ({joining} if joining else set()))
    wanted = wanted_voters(count)
    if voters >= wanted:
        return verdict(
            False,
            f"etcd learner {node} stays a learner: {voters} voting member(s) already, as "
            f"{count} host(s) want (1, 3 from 3 hosts, 5 from 5: an even number adds a vote "
            "needed, not a failure survived); it is promoted when the next host joins",
        )
    try:
        await store.promote_member(member_id)
    except StoreError as e:
        now = {m.id: m for m in await store.members()}.get(member_id)
        if now is not None and not now.learner:  # promoted meanwhile, by the other path
            return verdict(True, f"etcd member {node} votes")
        return verdict(
            False,
            f"etcd learner {node} cannot be promoted yet (its etcd not started, or not "
            f"caught up with the leader): {e}",
            retry=True,
        )
    return verdict(
        True,
        f"etcd member {node} promoted: {voters + 1} voting member(s) for {count} host(s)",
        promoted=True,
    )
