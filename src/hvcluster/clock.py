"""Time that a test drives, for the store (monotonic scale) and the sim driver (wall scale).

:class:`ManualClock` is the basis of deterministic simulation: nothing moves until the test
calls :meth:`ManualClock.advance`, which steps from one sleeper's deadline to the next, wakes
the sleepers due, runs the tick hooks (e.g. :meth:`MemoryStore.expire_leases`) and lets the
woken tasks run before it moves on.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable, Sized
from typing import Protocol


class Clock(Protocol):
    """Time as the agent daemon and its loops see it: real by default (:data:`SYSTEM`), or
    a :class:`ManualClock` that a simulation moves."""

    def now(self) -> float:
        """Monotonic seconds: deadlines, intervals, the watchdog's scale."""
        ...

    def wall(self) -> float:
        """Wall-clock seconds: what is written in records and compared across nodes."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clocks and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


SYSTEM = SystemClock()


class ManualClock:
    """A monotonic clock that only moves when told to. Call it to read the time."""

    def __init__(
        self, start: float = 1000.0, settle_rounds: int = 50, stop_when_idle: bool = False
    ) -> None:
        """``stop_when_idle``: a settle ends as soon as the loop has had nothing to run for
        two turns in a row, not after all ``settle_rounds`` (the same run, many times faster,
        when no thread works for the loop: a thread's result arriving between turns would
        be seen later than with every round done; ``hvc sim`` runs none)."""
        self._now = start
        self._settle_rounds = settle_rounds
        self._stop_when_idle = stop_when_idle
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        #: Called (in order) every time the clock moves, before sleepers run.
        self.on_tick: list[Callable[[], object]] = []

    def __call__(self) -> float:
        return self._now

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        """The same time (a manual clock has one scale: start it on the wall-clock scale
        when wall times matter, as a simulated cluster's do)."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of this clock's time (an awaitable drop-in for asyncio.sleep)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), fut))
        try:
            await fut
        finally:
            if not fut.done():
                fut.cancel()

    async def settle(self) -> None:
        """Let every runnable task run until it blocks again (a bounded number of rounds)."""
        if not self._stop_when_idle:
            for _ in range(self._settle_rounds):
                await asyncio.sleep(0)
            return
        # Two idle turns: a socket written in one turn is read in the next (its select).
        ready = _ready_queue(asyncio.get_running_loop())
        idle = 0
        for _ in range(self._settle_rounds):
            await asyncio.sleep(0)
            idle = idle + 1 if not ready else 0
            if idle == 2:
                return

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, stopping at every sleeper's deadline on the way."""
        if seconds < 0:
            raise ValueError(f"seconds must not be negative, got {seconds}")
        target = self._now + seconds
        await self.settle()
        while True:
            while self._sleepers and self._sleepers[0][2].done():  # cancelled: no stop there
                heapq.heappop(self._sleepers)
            due = self._sleepers[0][0] if self._sleepers else None
            if due is None or due > target:
                break
            self._now = max(self._now, due)
            self._tick()
            while self._sleepers and self._sleepers[0][0] <= self._now:
                _, _, fut = heapq.heappop(self._sleepers)
                if not fut.done():
                    fut.set_result(None)
            await self.settle()
        self._now = target
        self._tick()
        await self.settle()

    def _tick(self) -> None:
        for hook in self.on_tick:
            hook()


def _ready_queue(loop: asyncio.AbstractEventLoop) -> Sized:
    """The callbacks ``loop`` runs on its next turn (CPython's loops keep them in
    ``_ready``); a loop without one is never taken for idle."""
    ready = getattr(loop, "_ready", None)
    return ready if ready is not None else _NEVER_IDLE


_NEVER_IDLE: Sized = (None,)


async def settle(rounds: int = 20) -> None:
    """Give woken tasks a few loop turns to run to their next wait."""
    for _ in range(rounds):
        await asyncio.sleep(0)
