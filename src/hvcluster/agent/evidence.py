""" "Is it me, or is it etcd?": what an agent whose keepalives fail may learn of etcd, and how
long that lets it keep its VMs (docs/architecture.md, Safety rule 5).

Two kinds of positive evidence, each true of a moment after the question was asked (every
answer arrives after it):

* **nobody can act**: a majority of the members each was refused by its host (its etcd is
  not running) or answered with no live leader. No quorum then, so no lease can vanish before
  quorum returns, and the controller reclaims a node's VMs only ``fence_after`` + margin after
  it saw the node's key vanish: feeding until *asked* + ``fence_after`` is as safe as a
  confirmed keepalive sent at that moment.
* **nobody leads**: *every* member was refused or answered with no live leader. Any leader
  from then on wins a new election, and etcd's new leader renews every lease for a full TTL
  before it may revoke any: no key can vanish before *asked* + TTL, and a lease seen to run
  out is reclaimed a margin later still (``scheduler/liveness.py``): feeding until *asked* +
  TTL leaves the kill that margin to land, as a lease run out does. This carries a node
  across the first moments of members restarting after all crashed: a restarted member
  neither refuses nor answers until it has a quorum again, so it is no evidence at all.

A timeout is never evidence: a frozen member (it may be a leader that revokes every expired
lease the moment it resumes) and a cut link look the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from hvcluster.models.errors import StoreError
from hvcluster.store.base import Store
from hvcluster.store.health import nobody_can_act, nobody_leads
from hvcluster.tasks import Sleep, within


@dataclass(frozen=True)
class Evidence:
    """What one question to every member found."""

    reachable: int
    members: int
    nobody_can_act: bool  # a majority refused, or answered with no live leader
    nobody_leads: bool  # every member refused, or answered with no live leader

    def feeds_until(self, asked: float, fence_after: float, lease_ttl: float) -> float | None:
        """The watchdog deadline this evidence allows (monotonic ``asked``: when the
        question went out), or None: no evidence, the deadline stays."""
        if self.nobody_leads:
            return asked + max(fence_after, lease_ttl)
        if self.nobody_can_act:
            return asked + fence_after
        return None

    def describe(self) -> str:
        if self.nobody_leads:
            return f"none of the {self.members} etcd members runs or has a leader"
        if self.nobody_can_act:
            return (
                f"{self.reachable} of {self.members} etcd members answer, and a majority "
                "is not running or has no leader"
            )
        if not self.members:
            return "no etcd member answered"
        return (
            f"{self.reachable} of {self.members} etcd members reachable, and some may "
            "follow a leader"
        )


NONE = Evidence(reachable=0, members=0, nobody_can_act=False, nobody_leads=False)


async def seek(store: Store, budget: float, known: int = 0, sleep: Sleep | None = None) -> Evidence:
    """Ask every member, within ``budget`` seconds. ``known``: how many members the cluster
    was last seen to have. When no member answers, the members counted are the endpoints
    this agent was given; fewer than ``known`` (an agent given only some of them) prove
    nothing of the others: no evidence then. ``sleep``: the clock ``budget`` is measured on
    (real time when None; a simulation's virtual one)."""
    try:
        health = await within(store.health(), budget, sleep)
    except (StoreError, TimeoutError):
        return NONE
    if len(health.members) < known:
        return Evidence(health.reachable, len(health.members), False, False)
    return Evidence(
        health.reachable, len(health.members), nobody_can_act(health), nobody_leads(health)
    )


async def members_of(store: Store, budget: float, sleep: Sleep | None = None) -> int:
    """How many members etcd says it has (0: it could not say), within ``budget`` seconds
    of ``sleep``'s clock."""
    try:
        health = await within(store.health(), budget, sleep)
    except (StoreError, TimeoutError):
        return 0
    listed = any(m.id for m in health.members)  # ids come from etcd's own member list
    return len(health.members) if listed else 0
