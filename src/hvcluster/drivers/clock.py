"""Time for drivers that model it (the sim driver): the real clock, or one a test moves
(:class:`hvcluster.clock.ManualClock`, started on the wall-clock scale)."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from hvcluster.clock import ManualClock, settle

__all__ = ["Clock", "ManualClock", "SystemClock", "settle"]


class Clock(Protocol):
    def now(self) -> float:
        """Seconds, on the wall-clock scale (``since`` fields are read from it)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))
