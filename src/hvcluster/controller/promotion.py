"""The leader promotes joined etcd learners by itself (store/promotion.py says when): a host
that joined and started its etcd becomes a voter without anyone asking, whether or not its
``hvc node join`` still waits (the command ends, systemd starts etcd later, the host reboots).

etcd refuses a learner that has not caught up with the leader; each refusal is said
(``etcd.member.promotion_refused``, with the next try's delay) and asked again after a
backoff that doubles from :data:`FIRST_RETRY_S` to :data:`MAX_RETRY_S`, so a learner whose
etcd never starts costs one event a minute, not one a cycle. A learner that is to stay one
(the cluster has the voters its hosts want) is said once (``etcd.member.learner``), and again
only when the reason changes.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hvcluster.models.event import Say
from hvcluster.store.base import Store
from hvcluster.store.follow import run_cycles
from hvcluster.store.keys import Keys
from hvcluster.store.promotion import Verdict, joined_learners, promote_if_due, say_promoted

INTERVAL_S = 2.0  # how often the leader looks for learners (a member list: one small RPC)
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 60.0


@dataclass
class _Backoff:
    next_at: float = -math.inf
    delay: float = 0.0


class Promoter:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        say: Say,
        is_leader: Callable[[], bool],
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store, self.keys, self.say = store, keys, say
        self.is_leader, self.clock, self.sleep = is_leader, clock, sleep
        self.backoff: dict[int, _Backoff] = {}
        self.said: dict[int, str] = {}  # a learner's "stays a learner" reason, said once
        self.wake = asyncio.Event()

    async def run(self, interval: float = INTERVAL_S) -> None:
        await run_cycles("etcd promotion", self._turn, self.wake, interval, self.sleep)

    async def _turn(self) -> None:
        if self.is_leader():
            await self.cycle()
        else:  # a new leader says its waits afresh and tries at once
            self.backoff.clear()
            self.said.clear()

    async def cycle(self) -> list[Verdict]:
        """Try each joined learner that is due; the verdicts of those tried."""
        learners = await joined_learners(self.store, self.keys)
        ids = {learner.member.id for learner in learners}
        for gone in set(self.backoff) - ids:
            del self.backoff[gone]
        for gone in set(self.said) - ids:
            del self.said[gone]
        tried = []
        for learner in learners:
            member_id = learner.member.id
            backoff = self.backoff.setdefault(member_id, _Backoff())
            if self.clock() < backoff.next_at:
                continue
            verdict = await promote_if_due(self.store, self.keys, learner.node, member_id)
            tried.append(verdict)
            await self._said(verdict, backoff)
        return tried

    async def _said(self, verdict: Verdict, backoff: _Backoff) -> None:
        subject = f"node/{verdict.node}"
        if verdict.promoted:
            self.backoff.pop(verdict.member_id, None)
            await say_promoted(self.say, verdict, "by the controller")
        elif verdict.retry:
            backoff.delay = min(max(backoff.delay * 2, FIRST_RETRY_S), MAX_RETRY_S)
            backoff.next_at = self.clock() + backoff.delay
            await self.say(
                "etcd.member.promotion_refused",
                subject,
                f"{verdict.reason}; next try in {backoff.delay:.0f}s",
            )
        elif not verdict.voting and self.said.get(verdict.member_id) != verdict.reason:
            self.said[verdict.member_id] = verdict.reason
            await self.say("etcd.member.learner", subject, verdict.reason)
