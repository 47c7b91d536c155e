"""LeaseKeeper: hold a lease alive, and know for sure how fresh that knowledge is.

Self-fencing (docs/architecture.md, "Safety") rests on one number: the monotonic time at which the
last keepalive that etcd *confirmed* was *sent*. The lease cannot expire at the server before
that moment + TTL, because the server restarted the TTL after it received the request, which
was after we sent it. :meth:`LeaseKeeper.confirmed_within` answers "is my lease certainly
still alive?" from it.

The keeper uses nothing but the store contract, so it runs on etcd and on the memory store
(with a :class:`~hvcluster.store.clock.ManualClock` for deterministic simulation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from hvcluster.models.errors import LeaseLost, StoreError
from hvcluster.store.base import Store
from hvcluster.store.clock import Now, Sleep
from hvcluster.tasks import within

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Grants a lease and renews it every ``interval`` until stopped or the lease is lost.

    The renewing loop is a task of its own: cancelling the task that started the keeper does
    not stop it. Call :meth:`stop` in a ``finally``.
    """

    def __init__(
        self,
        store: Store,
        ttl: float,
        interval: float,
        *,
        on_lost: Callable[[LeaseLost], object] | None = None,
        clock: Now = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        call_timeout: float | None = None,
    ) -> None:
        """``call_timeout`` bounds each keepalive (default: ``interval``): an answer that
        comes later than the next keepalive is due is no use."""
        if ttl <= 0 or interval <= 0:
            raise ValueError(f"ttl and interval must be positive, got {ttl} and {interval}")
        self.store = store
        self.requested_ttl = ttl
        self.interval = interval
        self._on_lost = on_lost
        self._clock = clock
        self._sleep = sleep
        self._call_timeout = interval if call_timeout is None else call_timeout
        self._lease_id: int | None = None
        self.ttl: float = ttl  # as granted / last renewed by the store
        self.last_confirmed_sent: float | None = None
        self.lost = asyncio.Event()
        self.lost_reason: LeaseLost | None = None
        self.failures = 0  # keepalives in a row that got no answer
        self._task: asyncio.Task[None] | None = None

    @property
    def lease_id(self) -> int:
        if self._lease_id is None:
            raise LeaseLost("the lease keeper has not been started")
        return self._lease_id

    @property
    def alive(self) -> bool:
        return self._lease_id is not None and not self.lost.is_set()

    async def start(self) -> int:
        """Grant the lease and start renewing it; return its id."""
        if self._task is not None:
            return self.lease_id
        sent = self._clock()
        lease = await self.store.grant(self.requested_ttl)
        self._lease_id, self.ttl = lease.id, lease.ttl
        self.last_confirmed_sent = sent
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"lease-keeper-{lease.id:x}"
        )
        return lease.id

    def confirmed_within(self, seconds: float) -> bool:
        """True if a keepalive sent at most ``seconds`` ago was confirmed by the store."""
        if self.lost.is_set() or self.last_confirmed_sent is None:
            return False
        return self._clock() - self.last_confirmed_sent <= seconds

    def certainly_alive(self) -> bool:
        """True while the lease cannot have expired at the server (judged by our clock)."""
        return self.confirmed_within(self.ttl)

    async def keepalive_once(self) -> bool:
        """Send one keepalive now; True if confirmed. Marks the lease lost if it is gone."""
        if self.lost.is_set():
            return False
        sent = self._clock()
        try:
            # bounded on our clock (a simulation's virtual one), not in real seconds
            self.ttl = await within(
                self.store.keepalive(self.lease_id), self._call_timeout, self._sleep
            )
        except LeaseLost as e:
            self._mark_lost(e)
            return False
        except (StoreError, TimeoutError) as e:
            self.failures += 1
            log.warning(
                "keepalive of lease %x failed (%d in a row): %s",
                self.lease_id,
                self.failures,
                str(e) or type(e).__name__,
            )
            return False
        self.failures = 0
        if self.last_confirmed_sent is None or sent > self.last_confirmed_sent:
            self.last_confirmed_sent = sent
        return True

    def stop_renewing(self) -> None:
        """Stop renewing now, without waiting: what a shutdown that may itself be
        interrupted does first (a coroutine cancelled before it starts never runs, so an
        awaited :meth:`stop` alone could leave the lease renewed for ever)."""
        if self._task is not None:
            self._task.cancel()

    async def stop(self, revoke: bool = True) -> None:
        """Stop renewing; revoke the lease (deleting its keys) unless told not to."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if revoke and self._lease_id is not None and not self.lost.is_set():
            with contextlib.suppress(StoreError):
                await self.store.revoke(self._lease_id)
            self._mark_lost(LeaseLost(f"lease {self._lease_id:x} revoked on stop"), notify=False)

    async def _run(self) -> None:
        # Lost only when the store says so: after an etcd outage the lease is usually still
        # there (a new leader restarts every TTL). certainly_alive() is the local judgement.
        spent = 0.0
        while not self.lost.is_set():
            await self._sleep(max(0.0, self.interval - spent))
            started = self._clock()
            await self.keepalive_once()
            spent = self._clock() - started

    def _mark_lost(self, reason: LeaseLost, notify: bool = True) -> None:
        if self.lost.is_set():
            return
        self.lost_reason = reason
        self.lost.set()
        if notify:
            log.warning("%s", reason)
            if self._on_lost is not None:
                try:
                    self._on_lost(reason)
                except Exception:
                    log.exception("on_lost callback of lease %x failed", self.lease_id)
