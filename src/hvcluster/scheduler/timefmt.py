"""Times and durations as they appear in decision reasons. Pure: formats given timestamps,
never reads the clock. Times are shown in UTC (the scheduler's notion of the hour of day,
used by failback windows, is UTC as well)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def clock(t: float) -> str:
    """``12:01:04.5``: a time of day (UTC) with tenths, for short waits."""
    return utc(t).strftime("%H:%M:%S.%f")[:-5]


def stamp(t: float) -> str:
    """``2024-05-01 12:01:04 UTC``: a full timestamp, for long waits (quarantine)."""
    return utc(t).strftime("%Y-%m-%d %H:%M:%S UTC")


def span(seconds: float) -> str:
    """``3s``, ``1.5s``, ``30min``, ``2h``: a duration as a person would write it."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}min"
    return f"{seconds:g}s"


def hour_of(t: float) -> int:
    """The hour of day of ``t`` in UTC."""
    return utc(t).hour


def in_hour_window(t: float, start_hour: int, end_hour: int) -> bool:
    """Whether the UTC hour of ``t`` is in ``[start_hour, end_hour)``; a window whose end is
    not after its start crosses midnight (22 to 2 means 22:00 to 01:59)."""
    hour = hour_of(t)
    if start_hour < end_hour:
        return start_hour <= hour < end_hour
    return hour >= start_hour or hour < end_hour


def next_hour_start(t: float, hour: int) -> float:
    """The first time at or after ``t`` at which the UTC clock reads ``hour:00:00``."""
    now = utc(t)
    candidate = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    if candidate < now:
        candidate += timedelta(days=1)
    return candidate.timestamp()
