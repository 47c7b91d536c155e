"""Which HA VMs were down at each of the checker's looks, and what follows from that: how long
the cluster took to run every HA VM again after a fault (``lab/invariants.py``)."""

from __future__ import annotations

import bisect
import threading


class Looks:
    """Looks in time order: (wall clock time, the HA VMs found not running). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: list[float] = []
        self._down: list[frozenset[str]] = []

    def add(self, t: float, down: frozenset[str]) -> None:
        with self._lock:
            self._times.append(t)
            self._down.append(down)

    def all_running_since(self, t: float) -> bool:
        """Every HA VM ran at every look from ``t`` on (and there was one)."""
        with self._lock:
            i = bisect.bisect_left(self._times, t)
            return i < len(self._times) and not any(self._down[i:])

    def recovery(self, start: float, end: float) -> tuple[bool, float]:
        """(was any HA VM down at a look between ``start`` and ``end``; seconds from
        ``start`` until the first look after the last one that found one down, ``end`` if
        none)."""
        with self._lock:
            i = bisect.bisect_left(self._times, start)
            j = bisect.bisect_right(self._times, end)
            looks = list(zip(self._times[i:j], self._down[i:j], strict=True))
        last_down = max((k for k, (_, down) in enumerate(looks) if down), default=None)
        if last_down is None:
            return False, 0.0
        after = [t for t, down in looks[last_down + 1 :] if not down]
        return True, (after[0] if after else end) - start
