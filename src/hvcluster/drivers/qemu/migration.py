"""Live migration over QMP: capabilities and parameters from the cluster settings, ``migrate``,
the end from QEMU's MIGRATION events, progress from ``query-migrate`` every half second, and
QEMU's own measure of total time and downtime."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hvcluster.drivers.base import CompletionHook, MigrationResult, ProgressCallback
from hvcluster.drivers.errors import MigrationCancelled, MigrationFailed, PostcopyFailed
from hvcluster.drivers.qemu.monitor import Monitor
from hvcluster.models.config import MigrationSettings
from hvcluster.models.errors import DriverError
from hvcluster.models.migration import Progress

ACTIVE = frozenset(
    {"setup", "active", "pre-switchover", "device", "postcopy-active", "wait-unplug"}
)
POSTCOPY = frozenset({"postcopy-active"})
MIB = 1024 * 1024
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
        "max-bandwidth": settings.max_bandwidth_mib_s * MIB,
        "downtime-limit": settings.downtime_limit_ms,
    }
    if settings.multifd:
        params["multifd-channels"] = 2
    if settings.postcopy:  # its own cap once switched (0: none, QEMU's default)
        params["max-postcopy-bandwidth"] = settings.max_postcopy_bandwidth_mib_s * MIB
    return params


async def configure(monitor: Monitor, settings: MigrationSettings) -> None:
    """Set on both ends: capabilities such as multifd and postcopy must match."""
    await monitor.execute("migrate-set-capabilities", {"capabilities": capabilities(settings)})
    await monitor.execute("migrate-set-parameters", parameters(settings))


def progress_of(info: dict[str, Any]) -> Progress:
    ram, xbzrle = info.get("ram", {}), info.get("xbzrle-cache", {})
    page = int(ram.get("page-size", 0)) or 4096
    rate = float(ram.get("dirty-pages-rate", 0))
    return Progress(
        bytes_transferred=int(ram.get("transferred", 0)),
        bytes_remaining=int(ram.get("remaining", 0)),
        bytes_total=int(ram.get("total", 0)),
        dirty_rate_pages_s=rate,
        passes=int(ram.get("dirty-sync-count", 0)),
        dirty_rate_mib_s=rate * page / MIB,
        expected_downtime_ms=float(info.get("expected-downtime", 0)),
        cpu_throttle_pct=min(int(info.get("cpu-throttle-percentage", 0)), 100),
        postcopy=info.get("status") in POSTCOPY,
        xbzrle_pages=int(xbzrle.get("pages", 0)),
        xbzrle_cache_misses=int(xbzrle.get("cache-miss", 0)),
        multifd_bytes=int(ram.get("multifd-bytes", 0)),
        transfer_rate_mib_s=float(ram.get("mbps", 0)) * 1e6 / 8 / MIB,  # QEMU's megabits/s
    )


def not_converged(settings: MigrationSettings, last: Progress | None) -> str:
    """Why a migration is given up at its timeout: what QEMU last reported."""
    why = f"did not converge in {settings.timeout_s:g}s (timeout_s)"
    if last is None:
        return why
    return (
        f"{why}: {last.passes} pass{'es' if last.passes != 1 else ''}, guest dirtying "
        f"{last.dirty_rate_mib_s:.0f} MiB/s, "
        f"{last.bytes_remaining / MIB:.0f} MiB left, expected downtime "
        f"{last.expected_downtime_ms:.0f} ms over the {settings.downtime_limit_ms} ms limit"
        + (f", vCPUs throttled {last.cpu_throttle_pct} %" if last.cpu_throttle_pct else "")
    )


def postcopy_lost(uri: str, last: Progress | None, why: str) -> str:
    """What a failure in postcopy lost: the guest's memory (the part still on the source,
    and what the target changed since), so the VM runs again from its disk."""
    left = "" if last is None else f" ({last.bytes_remaining / MIB:.0f} MiB still on the source)"
    return (
        f"migration to {uri} failed in postcopy ({why}): the guest's memory was split between "
        f"both hosts{left} and is lost, with whatever it had not written to its disk; both "
        f"copies are killed and the VM starts again from its disk"
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
    (or resumes) the VM running here and :class:`MigrationFailed` is raised; a failure once
    in postcopy raises :class:`PostcopyFailed` (the VM cannot run here again).

    The end is heard from QEMU's MIGRATION events (the ``events`` capability is on): no
    polling while the guest is paused for the last pass. Progress is read with
    ``query-migrate`` every ``progress_every`` seconds, which also catches an end whose event
    was missed. ``on_complete(at)`` is awaited as soon as the end is heard, before QEMU's
    measures are asked for; ``at`` (the result's ``completed_at``) is when it was heard. In
    postcopy the switch is when postcopy starts (the guest is paused here for good and may
    run on the target, which fetches the rest): ``on_complete`` is awaited then."""
    await configure(monitor, settings)
    heard: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

    def on_event(event: str, data: dict[str, Any]) -> None:
        if event == "MIGRATION":
            heard.put_nowait((str(data.get("status", "")), time.time()))

    follow = _Follow(monitor, uri, settings, on_progress, on_complete, heard, progress_every)
    with monitor.subscribe(on_event):
        await monitor.execute("migrate", {"uri": uri})
        completed_at = await follow.run()
    if on_complete is not None and not follow.switched:
        await on_complete(completed_at)
    # QEMU fills in its times a moment after it says completed: ask again briefly if needed.
    info: dict[str, Any] = await monitor.execute("query-migrate")
    for _ in range(200):
        if info.get("total-time"):
            break
        await asyncio.sleep(0.002)
        info = await monitor.execute("query-migrate")
    progress = progress_of(info).model_copy(update={"postcopy": follow.switched})
    if on_progress is not None:
        on_progress(progress)
    return MigrationResult(
        total_ms=float(info.get("total-time", 0)),
        downtime_ms=float(info.get("downtime", 0)),
        setup_ms=float(info.get("setup-time", 0)),
        progress=progress,
        completed_at=follow.switched_at or completed_at,
    )


class _Follow:
    """One migration followed to its end (see :func:`run_migration`)."""

    def __init__(
        self,
        monitor: Monitor,
        uri: str,
        settings: MigrationSettings,
        on_progress: ProgressCallback | None,
        on_complete: CompletionHook | None,
        heard: asyncio.Queue[tuple[str, float]],
        progress_every: float,
    ) -> None:
        self.monitor, self.uri, self.settings = monitor, uri, settings
        self.on_progress, self.on_complete = on_progress, on_complete
        self.heard, self.every = heard, progress_every
        self.last: Progress | None = None
        self.postcopy_asked = False
        self.switched = False  # postcopy began: on_complete was awaited then
        self.switched_at = 0.0

    async def run(self) -> float:
        """Wait for the end of the migration; return the wall clock it completed."""
        name, deadline = self.monitor.name, time.monotonic() + self.settings.timeout_s
        while True:
            try:
                status, at = await asyncio.wait_for(self.heard.get(), self.every)
            except TimeoutError:
                status, at = await self._poll(), time.time()
                if status in ACTIVE and not self.switched and time.monotonic() > deadline:
                    await self._cancel(f"vm {name}: migration to {self.uri} ")
            if status in POSTCOPY and not self.switched:
                await self._switch(at)
            if status == "completed":
                return at
            if self.switched and status not in ACTIVE:
                why = status if status != "failed" else await self._error(status)
                raise PostcopyFailed(f"vm {name}: {postcopy_lost(self.uri, self.last, why)}")
            if status in ("cancelled", "cancelling"):
                raise MigrationCancelled(f"vm {name}: migration to {self.uri} was cancelled")
            if status == "failed" or (status not in ACTIVE and status != "none"):
                why = await self._error(status)
                raise MigrationFailed(f"vm {name}: migration to {self.uri} failed: {why}")

    async def _poll(self) -> str:
        """Progress from ``query-migrate``; ask for postcopy once precopy has had its passes."""
        info = await self.monitor.execute("query-migrate")
        status = str(info.get("status", ""))
        if status in ACTIVE:
            self.last = progress_of(info)
            if self.on_progress is not None:
                self.on_progress(self.last)
            # passes counts QEMU's dirty-bitmap syncs: the first is before any page is sent
            full_passes = self.last.passes - 1
            if (
                self.settings.postcopy
                and not self.postcopy_asked
                and status == "active"
                and full_passes >= self.settings.postcopy_after_passes
            ):
                await self.monitor.execute("migrate-start-postcopy")
                self.postcopy_asked = True
        return status

    async def _switch(self, at: float) -> None:
        self.switched, self.switched_at = True, at
        if self.on_complete is not None:
            await self.on_complete(at)

    async def _cancel(self, what: str) -> None:
        """The timeout passed in precopy: cancel (QEMU runs the guest here on) and say why."""
        why = not_converged(self.settings, self.last)
        await self.monitor.execute("migrate_cancel")
        for _ in range(100):  # until QEMU has let go of the guest (it resumes it)
            info = await self.monitor.execute("query-migrate")
            if info.get("status") not in ("cancelling", *ACTIVE):
                break
            await asyncio.sleep(0.05)
        raise MigrationFailed(what + why)

    async def _error(self, status: str) -> str:
        try:
            info = await self.monitor.execute("query-migrate")
        except DriverError:  # (a QEMU whose postcopy failed is being killed)
            return status
        return str(info.get("error-desc", status))
