"""Time as the store and its helpers see it: the real monotonic clock, or one a test drives
(:class:`hvcluster.clock.ManualClock`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from hvcluster.clock import ManualClock

# The time as the store reads it: seconds on the monotonic scale, each time it is called
# (``time.monotonic``, or a ManualClock). Not a ``Clock``: that is the daemon's and the
# sim driver's object that also sleeps (hvcluster.clock).
Now = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

__all__ = ["ManualClock", "Now", "Sleep"]
