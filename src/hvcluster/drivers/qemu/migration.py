"""Live migration over QMP: capabilities and parameters from the cluster settings, ``migrate``,
progress from ``query-migrate``, and QEMU's own measure of total time and downtime."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hvcluster.drivers.base import MigrationResult, ProgressCallback
from hvcluster.drivers.errors import MigrationCancelled, MigrationFailed
from hvcluster.drivers.qemu.monitor import Monitor
from hvcluster.models.config import MigrationSettings
from hvcluster.models.migration import Progress

ACTIVE = frozenset(
    {"setup", "active", "pre-switchover", "device", "postcopy-active", "wait-unplug"}
)
POLL_S = 0.01  # the guest is paused from completion until the caller hears of it


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
) -> MigrationResult:
    """Start ``migrate`` to ``uri`` and follow it to the end. On failure or timeout QEMU keeps
    (or resumes) the VM running here and :class:`MigrationFailed` is raised."""
    await configure(monitor, settings)
    await monitor.execute("migrate", {"uri": uri})
    deadline = time.monotonic() + settings.timeout_s
    postcopy_started = False
    info: dict[str, Any] = {}
    while True:
        info = await monitor.execute("query-migrate")
        status = info.get("status", "")
        if status == "completed":
            break
        if status == "cancelled":
            raise MigrationCancelled(f"vm {monitor.name}: migration to {uri} was cancelled")
        if status == "failed" or (status not in ACTIVE and status != "none"):
            why = info.get("error-desc", status)
            raise MigrationFailed(f"vm {monitor.name}: migration to {uri} failed: {why}")
        if on_progress is not None and status == "active":
            on_progress(progress_of(info))
        if settings.postcopy and not postcopy_started and progress_of(info).passes >= 2:
            await monitor.execute("migrate-start-postcopy")
            postcopy_started = True
        if time.monotonic() > deadline:
            await monitor.execute("migrate_cancel")
            raise MigrationFailed(
                f"vm {monitor.name}: migration to {uri} did not finish in {settings.timeout_s}s"
            )
        await asyncio.sleep(POLL_S)
    # QEMU can say "completed" before it has filled in the times: ask again briefly.
    for _ in range(200):
        if info.get("total-time"):
            break
        await asyncio.sleep(0.005)
        info = await monitor.execute("query-migrate")
    progress = progress_of(info)
    if on_progress is not None:
        on_progress(progress)
    return MigrationResult(
        total_ms=float(info.get("total-time", 0)),
        downtime_ms=float(info.get("downtime", 0)),
        setup_ms=float(info.get("setup-time", 0)),
        progress=progress,
    )
