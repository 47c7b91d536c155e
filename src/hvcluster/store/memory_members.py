"""The memory store's stateful fake of etcd's member list: one voting member (the store
itself), learners added by joins, a learner promoted only once :meth:`MemberList.catch_up`
says it has caught up, and etcd 3.4's refusals (a second learner at once, a peer URL in use,
promoting a learner out of sync), worded as etcd words them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from hvcluster.models.errors import NotFound, StoreError
from hvcluster.store.base import Membership


class MemberList:
    def __init__(self) -> None:
        self.itself = Membership(id=1, name="memory", peer_urls=("memory://1",))
        self._added: dict[int, Membership] = {}
        self._caught_up: set[int] = set()

    def all(self) -> tuple[Membership, ...]:
        return (self.itself, *self._added.values())

    def add(self, peer_urls: Sequence[str], learner: bool) -> Membership:
        if any(set(peer_urls) & set(m.peer_urls) for m in self.all()):
            raise StoreError(f"memory store: a member already has peer URL(s) {peer_urls}")
        if learner and any(m.learner for m in self._added.values()):  # etcd 3.4: one at a time
            raise StoreError("memory store: etcdserver: too many learner members in cluster")
        member = Membership(id=len(self._added) + 2, name="", peer_urls=tuple(peer_urls),
                            learner=learner)  # fmt: skip
        self._added[member.id] = member
        return member

    def catch_up(self, member_id: int, name: str) -> None:
        """The member started and caught up with the leader (what a real learner does)."""
        self._caught_up.add(member_id)
        self._added[member_id] = replace(self._added[member_id], name=name)

    def promote(self, member_id: int) -> None:
        member = self._added.get(member_id)
        if member is None or not member.learner:
            raise StoreError(f"memory store: member {member_id:x} is not a learner")
        if member_id not in self._caught_up:
            raise StoreError(
                "memory store: can only promote a learner member which is in sync with leader"
            )
        self._added[member_id] = replace(member, learner=False)

    def remove(self, member_id: int) -> None:
        if self._added.pop(member_id, None) is None:
            raise NotFound(f"etcd member {member_id:x} not found")
