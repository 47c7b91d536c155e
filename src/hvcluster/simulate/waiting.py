"""Polling on a clock: how a simulation (and the tests built on it) waits for the cluster.

On a :class:`~hvcluster.clock.ManualClock` each poll moves the clock on (nothing else makes
it move), so a wait of virtual seconds takes the CPU time of what happens meanwhile.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any, Protocol

POLL_S = 0.05


class SteppedClock(Protocol):
    """What :func:`wait_for` needs of a manual clock."""

    def now(self) -> float: ...

    async def advance(self, seconds: float) -> None: ...


def timed_out(what: str, timeout: float, last: Any) -> AssertionError:
    """The failure of a wait, naming what was awaited and the last value seen."""
    return AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    *,
    every: float = POLL_S,
    clock: SteppedClock | None = None,
    tolerate: tuple[type[BaseException], ...] = (),
) -> Any:
    """The first true value of ``predicate`` (sync or async), polled every ``every``
    seconds (of ``clock``, moved on by each poll, when given; else real time); an exception
    of a type in ``tolerate`` counts as a false value. Fails naming ``what`` after
    ``timeout``."""
    now = clock.now if clock is not None else time.monotonic
    end = now() + timeout
    last: Any = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except tolerate as e:
            value = None
            last = e
        else:
            last = value
        if value:
            return value
        if now() >= end:
            raise timed_out(what, timeout, last)
        if clock is not None:
            await clock.advance(every)
        else:
            await asyncio.sleep(every)
