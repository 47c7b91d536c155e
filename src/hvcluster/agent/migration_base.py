"""What the source and target halves of :class:`hvcluster.agent.migration.MigrationWorker`
share: the store, the node agent, the jobs under way, and small helpers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from hvcluster.agent.node import NodeAgent
from hvcluster.agent.shared_nothing import SharedNothing
from hvcluster.models.errors import DriverError, StoreError
from hvcluster.models.event import Say
from hvcluster.models.lifecycle import MigrationState
from hvcluster.models.migration import Migration
from hvcluster.store.base import Store
from hvcluster.store.keys import Keys
from hvcluster.store.migrations import change_migration
from hvcluster.store.reads import Reader

log = logging.getLogger(__name__)

_M = MigrationState
QUIET_S = 0.05  # the reconcile holds off this long (at most) while a guest switches over here


class MigrationBase:
    def __init__(self, store: Store, keys: Keys, agent: NodeAgent, say: Say) -> None:
        self.store, self.keys, self.agent, self.say = store, keys, agent, say
        self.me = agent.me.name
        self.driver = agent.driver
        self.tasks: dict[str, asyncio.Task[None]] = {}  # record id -> its job here
        self.task_vms: dict[str, str] = {}  # record id -> its VM, while its job runs
        self.cancelled: set[str] = set()  # records whose transfer we asked the driver to stop
        self.migrated_out: dict[str, str] = {}  # vm -> record id: paused here after transfer
        self.finished: set[str] = set()  # records this host is done with
        self.flipped: set[str] = set()  # records this host flipped as their source
        self.times: dict[str, dict[str, Any]] = {}  # QEMU's measures of those, not yet written
        self.errors: dict[str, int] = {}  # record id -> unexpected errors of its steps here
        self.cycles = 0  # cycles begun (tests wait on it: 'a later cycle did not retry')
        self.verify_waits: dict[str, asyncio.Event] = {}  # quick: source awaits target's check
        self.shared = SharedNothing(store, keys, agent)  # disks that travel with the memory
        self.wake = asyncio.Event()
        self.read = Reader(store, keys)

    def _quiet(self, seconds: float = QUIET_S) -> None:
        """Hold this host's reconcile off for a moment: a guest is switching over here."""
        self.agent.quiet_until = max(self.agent.quiet_until, self.agent.clock.now() + seconds)

    def _spawn(self, rec: Migration, job: Awaitable[None]) -> None:
        mid = rec.id

        async def run() -> None:
            try:
                await job
            except (StoreError, DriverError, TimeoutError) as e:
                log.warning("migration %s: %s", mid, e)
            except Exception as e:  # a bug (ours or the driver's): this record only
                await self._broke(rec, e)
            finally:
                self.task_vms.pop(mid, None)
                if mid not in self.flipped:  # (a flip here: the target's resume wakes us)
                    self.wake.set()
                    self.agent.wake.set()

        self.task_vms[mid] = rec.vm
        self.tasks[mid] = asyncio.create_task(run(), name=f"migration-{mid}")

    async def _broke(self, rec: Migration, error: Exception) -> None:
        """An unexpected exception in this host's part of ``rec``: logged with its traceback,
        the record failed with the reason if it is still under way (the source keeps or
        resumes the VM, the target discards its copy: the usual paths of a failed record),
        else said as ``migration.error``. Failed is final: the record is never retried."""
        log.error("migration %s of %s on %s", rec.id, rec.vm, self.me, exc_info=error)
        reason = f"unexpected error on {self.me}: {type(error).__name__}: {error}"
        try:
            if not await self._fail(rec, reason):
                await self.say("migration.error", f"vm/{rec.vm}", f"migration {rec.id}: {reason}")
        except (StoreError, TimeoutError) as e:
            log.warning("migration %s: could not record its error: %s", rec.id, e)

    async def _while_preparing(self, rec: Migration, field: str, value: object) -> bool:
        """The target's part of preparing: ``field`` of ``rec`` set to ``value``, once, while
        the record is preparing; False if it moved on (cancelled or failed meanwhile)."""

        def write(cur: Migration) -> Migration | None:
            if cur.state is not _M.PREPARING or getattr(cur, field):
                return None
            return cur.model_copy(update={field: value})

        return (
            await change_migration(
                self.store, self.keys, rec.id, write, now=self.agent.clock.wall()
            )
            is not None
        )

    async def _fail(self, rec: Migration, reason: str) -> bool:
        """Fail ``rec`` with ``reason`` (said as ``migration.failed``); False if it was not
        under way any more, or switching (the controller decides then)."""

        def fail(cur: Migration) -> Migration | None:
            if not cur.active or cur.state is _M.SWITCHING:
                return None  # final already, or the controller decides now
            return cur.model_copy(update={"state": _M.FAILED, "reason": reason})

        if (
            await change_migration(self.store, self.keys, rec.id, fail, now=self.agent.clock.wall())
            is None
        ):
            return False
        await self.say("migration.failed", f"vm/{rec.vm}", f"migration {rec.id}: {reason}")
        return True
