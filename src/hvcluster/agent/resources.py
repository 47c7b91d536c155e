"""The periodic check of this host's shared volumes and virtual switches.

Every few seconds (and at start) the agent reads ``volumes/`` and ``switches/``, checks each
volume (:mod:`hvcluster.host.storage`), makes each switch's bridge
(:mod:`hvcluster.host.network`), tells its driver where the volumes it sees are mounted,
and, when anything changed, reports it in ``nodes/<me>`` through the node agent's CAS
update. It also carries out disk deletions of deleted VMs. Nothing here stops the agent: a
failed check is a problem reported for that volume or switch, a store error waits for the
next round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from hvcluster.drivers.base import Driver
from hvcluster.host.network import Links, check_switches
from hvcluster.host.storage import check_volume
from hvcluster.models.errors import HvcError, StoreError
from hvcluster.models.event import Say
from hvcluster.models.storage import Switch, Volume
from hvcluster.store.base import Store
from hvcluster.store.keys import Keys
from hvcluster.store.reads import read_kind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resources:
    """What this node reports of its switches and volumes in ``nodes/<me>``."""

    switches: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    volume_free_mib: dict[str, int] = field(default_factory=dict)
    switch_problems: dict[str, str] = field(default_factory=dict)
    volume_problems: dict[str, str] = field(default_factory=dict)
    interfaces_in_use: dict[str, str] = field(default_factory=dict)  # never uplinks

    def fields(self) -> dict[str, object]:
        return {
            "switches": self.switches,
            "volumes": self.volumes,
            "volume_free_mib": dict(self.volume_free_mib),
            "switch_problems": dict(self.switch_problems),
            "volume_problems": dict(self.volume_problems),
            "interfaces_in_use": dict(self.interfaces_in_use),
        }

    def same_but_free_space(self, other: Resources, slack_mib: int) -> bool:
        """Equal, free space aside when it moved by less than ``slack_mib`` per volume
        (so a busy volume does not rewrite the node record every round)."""
        if (
            self.switches,
            self.volumes,
            self.switch_problems,
            self.volume_problems,
            self.interfaces_in_use,
        ) != (
            other.switches,
            other.volumes,
            other.switch_problems,
            other.volume_problems,
            other.interfaces_in_use,
        ):
            return False
        return all(
            abs(free - other.volume_free_mib.get(name, -(10**12))) < slack_mib
            for name, free in self.volume_free_mib.items()
        )


class HostResources:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        node: str,
        links: Links,
        driver: Driver,
        report: Callable[[Resources], Awaitable[object]],
        say: Say,
        interval: float = 2.0,
        free_slack_mib: int = 256,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.sleep = sleep
        self.store, self.keys, self.node = store, keys, node
        self.links, self.driver, self.report, self.say = links, driver, report, say
        self.interval, self.free_slack_mib = interval, free_slack_mib
        self.current: Resources | None = None
        self.mounts: dict[str, Path] = {}
        self.on_mounts: list[Callable[[dict[str, Path]], None]] = []
        self.after_check: list[Callable[[], Awaitable[None]]] = []
        self.checks = 0

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except (StoreError, TimeoutError) as e:
                log.warning("volume and switch check failed: %s", e)
            except Exception:  # a bug here must not take the node agent down with it
                log.exception("volume and switch check failed unexpectedly")
            await self.sleep(self.interval)

    async def check(self) -> Resources:
        """One round; returns what this node has now."""
        self.checks += 1
        volumes = await read_kind(self.store, self.keys, "volumes", Volume)
        switches = await read_kind(self.store, self.keys, "switches", Switch)
        seen: list[str] = []
        free: dict[str, int] = {}
        problems: dict[str, str] = {}
        mounts: dict[str, Path] = {}
        for name, stored in sorted(volumes.items.items()):
            volume = stored.value
            result = await asyncio.to_thread(check_volume, volume)  # never writes a marker
            if result.seen:
                seen.append(name)
                free[name] = result.free_mib or 0
                mounts[name] = Path(volume.path)
            else:
                problems[name] = result.problem or "not seen"
        switch_report = await check_switches(self.links, (s.value for s in switches.items.values()))
        now = Resources(
            switches=switch_report.ready,
            volumes=tuple(seen),
            volume_free_mib=free,
            switch_problems=switch_report.problems,
            volume_problems=problems,
            interfaces_in_use=switch_report.in_use,
        )
        if mounts != self.mounts:
            self.mounts = mounts
            self.driver.set_volumes(mounts)
            for hook in self.on_mounts:
                hook(dict(mounts))
        if self.current is None or not now.same_but_free_space(self.current, self.free_slack_mib):
            await self.report(now)
            await self._tell_changes(self.current, now)
            self.current = now
        for after in self.after_check:
            try:
                await after()
            except HvcError as e:
                log.warning("after the volume and switch check: %s", e)
        return now

    async def _tell_changes(self, before: Resources | None, now: Resources) -> None:
        """An event when a switch or volume becomes ready here, or a new problem appears."""
        old = before or Resources()
        for what, was, has, why, had in (
            ("switch", old.switches, now.switches, now.switch_problems, old.switch_problems),
            ("volume", old.volumes, now.volumes, now.volume_problems, old.volume_problems),
        ):
            for name in sorted(set(has) - set(was)):
                await self.say(
                    f"{what}.ready", f"{what}/{name}", f"{what} {name} ready on {self.node}"
                )
            for name, problem in sorted(why.items()):
                if had.get(name) != problem:
                    await self.say(
                        f"{what}.missing",
                        f"{what}/{name}",
                        f"{what} {name} missing on {self.node}: {problem}",
                    )
