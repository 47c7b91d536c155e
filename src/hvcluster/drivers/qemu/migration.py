"""Live migration over QMP: capabilities and parameters from the cluster settings, ``migrate``,
the end from QEMU's MIGRATION events, progress from ``query-migrate`` every half second, and
QEMU's own measure of total time and downtime."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hvcluster.drivers.base import CompletionHook, MigrationResult, ProgressCallback
from hvcluster.drivers.errors import MigrationCancelled, MigrationFailed
from hvcluster.drivers.qemu.monitor import Monitor
from hvcluster.models.config import MigrationSettings
from hvcluster.models.migration import Progress

ACTIVE = frozenset(
    {"setup", "active", "pre-switchover", "device", "postcopy-active", "wait-unplug"}
)
PROGRESS_S = 0.5  # query-migrate this often for progress (the end comes as an event)


def capabilities(settings: MigrationSettings) -> list[dict[str, Any]]:
    wanted = {
        "events": True,
        "auto-converge": settings.auto_converge,
        "xbzrle": settings.xbzrle,
        "multifd": settings.multifd,
        "postcopy-ram": settings.postcopy,
    }
    return [{"capability": k, "state": v} for k, v in wanted.items()]


def parameters(settings: MigrationSettings) -> dict[str, Any]:
    params: dict[str, Any] = {
        "max-bandwidth": settings.max_bandwidth_mib_s * 1024 * 1024,
        "downtime-limit": settings.downtime_limit_ms,
    }
    if settings.multifd:
        params["multifd-channels"] = 2
    return params


async def configure(monitor: Monitor, settings: MigrationSettings) -> None:
    """Set on both ends: capabilities such as multifd and postcopy must match."""
    await monitor.execute("migrate-set-capabilities", {"capabilities": capabilities(settings)})
    await monitor.execute("migrate-set-parameters", parameters(settings))


def progress_of(info: dict[str, Any]) -> Progress:
    ram = info.get("ram", {})
    return Progress(
        bytes_transferred=int(ram.get("transferred", 0)),
        bytes_remaining=int(ram.get("remaining", 0)),
        bytes_total=int(ram.get("total", 0)),
        dirty_rate_pages_s=float(ram.get("dirty-pages-rate", 0)),
        passes=int(ram.get("dirty-sync-count", 0)),
    )


async def run_migration(
    monitor: Monitor,
    uri: str,
    settings: MigrationSettings,
    on_progress: ProgressCallback | None = None,
    on_complete: CompletionHook | None = None,
    progress_every: float = PROGRESS_S,
) -> MigrationResult:
    """Start ``migrate`` to ``uri`` and follow it to the end. On failure or timeout QEMU keeps
    (or resumes) the VM running here and :class:`MigrationFailed` is raised.

    The end is heard from QEMU's MIGRATION events (the ``events`` capability is on): no
    polling while the guest is paused for the last pass. Progress is read with
    ``query-migrate`` every ``progress_every`` seconds, which also catches an end whose event
    was missed. ``on_complete(at)`` is awaited as soon as the end is heard, before QEMU's
    measures are asked for; ``at`` (the result's ``completed_at``) is when it was heard."""
    await configure(monitor, settings)
    heard: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

    def on_event(event: str, data: dict[str, Any]) -> None:
        if event == "MIGRATION":
            heard.put_nowait((str(data.get("status", "")), time.time()))

    with monitor.subscribe(on_event):
        await monitor.execute("migrate", {"uri": uri})
        completed_at = await _follow(monitor, uri, settings, on_progress, heard, progress_every)
    if on_complete is not None:
        await on_complete(completed_at)
    # QEMU fills in its times a moment after it says completed: ask again briefly if needed.
    info: dict[str, Any] = await monitor.execute("query-migrate")
    for _ in range(200):
        if info.get("total-time"):
            break
        await asyncio.sleep(0.002)
        info = await monitor.execute("query-migrate")
    progress = progress_of(info)
    if on_progress is not None:
        on_progress(progress)
    return MigrationResult(
        total_ms=float(info.get("total-time", 0)),
        downtime_ms=float(info.get("downtime", 0)),
        setup_ms=float(info.get("setup-time", 0)),
        progress=progress,
        completed_at=completed_at,
    )


async def _follow(
    monitor: Monitor,
    uri: str,
    settings: MigrationSettings,
    on_progress: ProgressCallback | None,
    heard: asyncio.Queue[tuple[str, float]],
    progress_every: float,
) -> float:
    """Wait for the end of the migration; return the wall clock it completed."""
    deadline = time.monotonic() + settings.timeout_s
    postcopy_started = False
    while True:
        try:
            status, at = await asyncio.wait_for(heard.get(), progress_every)
        except TimeoutError:
            info = await monitor.execute("query-migrate")
            status, at = str(info.get("status", "")), time.time()
            if on_progress is not None and status == "active":
                on_progress(progress_of(info))
            if settings.postcopy and not postcopy_started and progress_of(info).passes >= 2:
                await monitor.execute("migrate-start-postcopy")
                postcopy_started = True
            if status in ACTIVE and time.monotonic() > deadline:
                await monitor.execute("migrate_cancel")
                raise MigrationFailed(
                    f"vm {monitor.name}: migration to {uri} did not finish in {settings.timeout_s}s"
                ) from None
        if status == "completed":
            return at
        if status in ("cancelled", "cancelling"):
            raise MigrationCancelled(f"vm {monitor.name}: migration to {uri} was cancelled")
        if status == "failed" or (status not in ACTIVE and status != "none"):
            info = await monitor.execute("query-migrate")
            why = info.get("error-desc", status)
            raise MigrationFailed(f"vm {monitor.name}: migration to {uri} failed: {why}")
