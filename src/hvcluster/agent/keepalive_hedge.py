"""Hedged keepalives: while one keepalive hangs, send another beside it.

When etcd's leader freezes, a keepalive already on its way is stuck: the member that took it
forwards it to the frozen leader and waits there until our deadline (etcd 3.4's
``LeaseRenew`` tries the next leader only after the forward fails). A keepalive sent *after*
the members elected a new leader goes through at once. Sending one keepalive per interval
with a deadline of most of an interval, a node could go up to three intervals without a
confirmed keepalive across a leader change (the last one sent just before the freeze, the
next stuck, the one after stuck too when it left before the election ended): on the fast
profile that is the whole of ``fence_after``.

So while no answer has come, another keepalive leaves every ``hedge_after`` (one leaving
after the election is answered within a round trip), each with its own deadline, and the
first confirmed one counts, with the time *it* was sent (Safety rule 2: the lease cannot
expire at the server before that time + TTL). Requests that fail fast (a member refusing
connections) end the round as a single keepalive did: hedging is for the slow case only, so
an outage costs etcd no extra requests.

Every wait here is on the caller's clock (``clock`` and ``sleep``): in a simulation that
is virtual time, and a deadline in real seconds would end a hung keepalive at a virtual
moment set by how fast the machine runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from hvcluster.models.errors import LeaseLost, StoreError, StoreUnavailable
from hvcluster.store.base import Store
from hvcluster.tasks import Sleep


@dataclass(frozen=True)
class Confirmed:
    """A confirmed keepalive: when it was sent (monotonic) and the TTL etcd gave back."""

    sent: float
    ttl: float


async def hedged_keepalive(
    store: Store,
    lease_id: int,
    *,
    interval: float,
    hedge_after: float,
    clock: Callable[[], float],
    sleep: Sleep = asyncio.sleep,
) -> Confirmed:
    """Renew ``lease_id``, sending another keepalive every ``hedge_after`` while none has
    answered, for at most ``interval``. Raises :class:`LeaseLost` when etcd says the lease
    is gone, else the last error when every keepalive sent failed."""
    started = clock()
    sent_at: dict[asyncio.Task[float], float] = {}
    last_error: BaseException | None = None

    def send() -> None:
        # The store's own deadline (shorter than ours) lets it time out and move to the
        # next member: cancelled from outside, it would stay on a frozen one.
        call = store.keepalive(lease_id, timeout=0.9 * interval)
        sent_at[asyncio.ensure_future(call)] = clock()

    send()
    hedges = 1  # the next one's number: it leaves at started + hedges * hedge_after
    try:
        while sent_at:
            now = clock()
            for task, sent in list(sent_at.items()):  # each has ``interval`` to answer
                if not task.done() and now - sent >= interval:
                    del sent_at[task]
                    task.add_done_callback(_forget)
                    task.cancel()
                    last_error = TimeoutError(f"no answer to a keepalive in {interval:g}s")
            if not sent_at:
                break
            hedge_at = started + hedges * hedge_after if hedges * hedge_after < interval else None
            wake = min(sent + interval for sent in sent_at.values())
            wake = wake if hedge_at is None else min(wake, hedge_at)
            # one timer (on the caller's clock) for the next hedge and the deadlines
            timer = asyncio.ensure_future(sleep(max(0.0, wake - now)))
            try:
                await asyncio.wait([*sent_at, timer], return_when=asyncio.FIRST_COMPLETED)
            finally:
                timer.cancel()
            # in the order sent (not a set's: its order follows the tasks' addresses)
            done = [task for task in sent_at if task.done()]
            if not done:
                if hedge_at is not None and clock() >= hedge_at:
                    send()
                    hedges += 1
                continue
            confirmed: Confirmed | None = None
            for task in done:  # every result read, so none is left unretrieved
                sent = sent_at.pop(task)
                if task.cancelled():  # not by us: gRPC, its channel dropped by another
                    last_error = StoreUnavailable("a keepalive's channel was dropped")
                    continue
                try:
                    ttl = task.result()
                except LeaseLost:
                    raise
                except (StoreError, TimeoutError) as e:
                    last_error = e
                    continue
                if confirmed is None or sent > confirmed.sent:
                    confirmed = Confirmed(sent, ttl)
            if confirmed is not None:
                return confirmed
        assert last_error is not None
        raise last_error
    finally:
        for task in sent_at:  # still in flight: no longer wanted
            task.add_done_callback(_forget)
            task.cancel()


def _forget(task: asyncio.Task[float]) -> None:
    """Read a dropped keepalive's outcome, so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
