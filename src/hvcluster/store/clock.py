"""Time as the store and its helpers see it: the real monotonic clock, or one a test drives
(:class:`hvcluster.clock.ManualClock`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from hvcluster.clock import ManualClock

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

__all__ = ["Clock", "ManualClock", "Sleep"]
