"""The one way tests wait: poll a predicate until it gives a true value, or fail naming
what was awaited (with the last value seen).

:func:`wait_for` is the async form (the predicate may be sync or async); by default it polls
on real time, and a test on a :class:`hvcluster.clock.ManualClock` passes
``clock=the_clock``: each poll then moves that clock on (nothing else makes it move) and the
timeout is of its time. :func:`wait_for_sync` is the form for tests outside an event loop
(lab processes, threads).

A test never sleeps a fixed time before an assert: a positive assert waits with these; a
negative one ("nothing moved") first waits for positive evidence that the moment of decision
has passed (a deadline on the clock, an event, a counter), then asserts.
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


def _failed(what: str, timeout: float, last: Any) -> AssertionError:
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
    seconds (of ``clock``, moved on by each poll, when given); an exception of a type in
    ``tolerate`` counts as a false value. Fails naming ``what`` after ``timeout``."""
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
            raise _failed(what, timeout, last)
        if clock is not None:
            await clock.advance(every)
        else:
            await asyncio.sleep(every)


def wait_for_sync(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    *,
    every: float = POLL_S,
    tolerate: tuple[type[BaseException], ...] = (),
) -> Any:
    """:func:`wait_for` for code outside an event loop: real time, a sync predicate."""
    end = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = value = predicate()
        except tolerate as e:
            value, last = None, e
        if value:
            return value
        if time.monotonic() >= end:
            raise _failed(what, timeout, last)
        time.sleep(every)
