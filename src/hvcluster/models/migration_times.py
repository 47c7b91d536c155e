"""A migration record's measures of itself: downtime and total time, filled in once both the
source's and the target's halves are written, and the words of its ``migration.done`` event.
Pure functions of the record (no store)."""

from __future__ import annotations

from hvcluster.models.lifecycle import MigrationState
from hvcluster.models.migration import Migration, MigrationKind

TIMES_LOST = "downtime unknown: "  # a done record's reason when its source's measures are lost


def with_times(rec: Migration) -> Migration:
    """``rec`` with ``downtime_ms`` and ``total_ms`` filled in once both halves are there:
    QEMU's part of the downtime (written by the source, or for a quick migration the save
    time) and the target's ``resumed_at``. Unchanged while either is missing."""
    stopped = rec.transfer_ms if rec.kind is MigrationKind.QUICK else rec.transfer_downtime_ms
    if stopped is None and rec.reason.startswith(TIMES_LOST) and rec.resumed_at:
        return rec.model_copy(update={"total_ms": (rec.resumed_at - rec.created) * 1000})
    if stopped is None or not rec.resumed_at or rec.downtime_ms is not None:
        return rec
    switch = (rec.resumed_at - rec.switching_at) * 1000
    return rec.model_copy(
        update={
            "downtime_ms": stopped + switch,
            "total_ms": (rec.resumed_at - rec.created) * 1000,
        }
    )


def source_times_lost(rec: Migration, why: str) -> Migration:
    """A done record whose source's measures of the transfer were lost (the agent that ran
    it went away before writing them): the downtime stays unknown, ``reason`` says why, and
    the total is filled from the target's ``resumed_at`` (now, or by :func:`with_times` when
    the target writes it later)."""
    return with_times(rec.model_copy(update={"reason": TIMES_LOST + why}))


def times_missing(rec: Migration) -> bool:
    """A done record still waiting for its source's measures of the transfer."""
    stopped = rec.transfer_ms if rec.kind is MigrationKind.QUICK else rec.transfer_downtime_ms
    return (
        rec.state is MigrationState.DONE
        and rec.switching_at > 0  # (every flip writes it)
        and stopped is None
        and rec.downtime_ms is None
        and not rec.reason.startswith(TIMES_LOST)
    )


def done_sentence(rec: Migration) -> str:
    """The ``migration.done`` event's words for a record :func:`with_times` completed."""
    transfer = rec.transfer_downtime_ms or 0.0
    switch = (rec.resumed_at - rec.switching_at) * 1000
    if rec.downtime_ms is None:
        total = f"{rec.total_ms:.0f} ms" if rec.total_ms is not None else "unknown"
        return (
            f"vm {rec.vm} moved from {rec.source} to {rec.target} by {rec.kind.value} "
            f"migration {rec.id}: {rec.reason or 'downtime unknown'}; total {total}"
        )
    return (
        f"vm {rec.vm} moved from {rec.source} to {rec.target} by {rec.kind.value} migration "
        f"{rec.id}: downtime {rec.downtime_ms or 0:.0f} ms (transfer {transfer:.0f} ms, "
        f"switch {switch:.0f} ms), total {rec.total_ms or 0:.0f} ms"
    )
