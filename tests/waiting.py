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

import time
from collections.abc import Callable
from typing import Any

from hvcluster.simulate.waiting import POLL_S, SteppedClock, wait_for
from hvcluster.simulate.waiting import timed_out as _failed

__all__ = ["POLL_S", "SteppedClock", "wait_for", "wait_for_sync"]


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
