"""The agent's part of migrations: this host as the target or the source of a move.

The protocol (see ``migrations/<id>`` and :mod:`hvcluster.controller.migrations`):

* target, on ``preparing``: takes the VM into :attr:`NodeAgent.incoming` (its reconcile then
  leaves it alone), starts it paused waiting for the transfer (``prepare_incoming`` at epoch
  + 1; a quick migration only names the state file) and writes ``target_address``;
* source, on seeing the address: ``transferring``, runs ``migrate_out`` (or ``save``),
  publishing progress at most every :data:`PROGRESS_EVERY` seconds; on completion
  ``switching`` with QEMU's downtime and total time;
* the controller flips the placement and marks the record ``done`` in one transaction;
* target, on ``done`` with the placement flipped to it: ``resume`` (or ``restore``), and the
  VM is its own; the source's paused copy is killed by its reconcile (the placement moved)
  and discarded here.

Any failure or cancel before the flip: the target discards its copy, the source keeps (or
resumes) the VM. Never two running: the target resumes only after the flip is committed, and
the source resumes only when the record failed while the placement is still its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from hvcluster.agent.node import NodeAgent
from hvcluster.drivers.base import VMInfo
from hvcluster.drivers.errors import MigrationCancelled
from hvcluster.models.base import decode
from hvcluster.models.errors import CorruptValue, DriverError, StoreError
from hvcluster.models.lifecycle import MigrationState, VMState
from hvcluster.models.migration import Migration, MigrationKind, Progress
from hvcluster.models.vm import Placement, VMSpec
from hvcluster.store.base import Store, WatchEvent
from hvcluster.store.follow import follow
from hvcluster.store.keys import Keys
from hvcluster.store.migrations import change_migration, read_migrations
from hvcluster.store.state import read_config

log = logging.getLogger(__name__)

Say = Callable[[str, str, str], Awaitable[None]]
_M = MigrationState
PROGRESS_EVERY = 0.5  # seconds between progress writes into the record
RECENT_S = 300.0  # a done record older than this no longer makes a paused target resume
FILE_PREFIX = "file:"
SETTLE_S = 30.0  # how long a target waits for its driver to see an incoming stream end


class MigrationWorker:
    def __init__(
        self, store: Store, keys: Keys, agent: NodeAgent, say: Say, state_dir: Path
    ) -> None:
        self.store, self.keys, self.agent, self.say = store, keys, agent, say
        self.me = agent.me.name
        self.driver = agent.driver
        self.state_dir = state_dir
        self.tasks: dict[str, asyncio.Task[None]] = {}  # record id -> its job here
        self.cancelled: set[str] = set()  # records whose transfer we asked the driver to stop
        self.migrated_out: dict[str, str] = {}  # vm -> record id: paused here after transfer
        self.finished: set[str] = set()  # records this host is done with
        self.wake = asyncio.Event()

    # --- the loop --------------------------------------------------------------------
    async def run(self, interval: float = 1.0) -> None:
        while True:
            try:
                await self.cycle()
            except (StoreError, TimeoutError) as e:
                log.warning("migration cycle failed: %s", e)
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), interval)

    async def watch(self) -> None:
        def seen(event: WatchEvent) -> None:
            self.wake.set()
            self._fast_take_over(event.key, event.value)

        await follow(self.store, self.keys.prefix("migrations"), seen)

    async def cycle(self) -> None:
        for task_id in [t for t, task in self.tasks.items() if task.done()]:
            self.tasks.pop(task_id)
        records = await read_migrations(self.store, self.keys)
        for mid, stored in sorted(records.items.items()):
            rec = stored.value
            if mid in self.finished:
                continue
            if rec.target == self.me:
                await self._as_target(rec)
            if rec.source == self.me:
                await self._as_source(rec)

    def _fast_take_over(self, key: str, value: bytes) -> None:
        """A record just became done with us as its target: run the VM now, without
        waiting for the next cycle (the guest is paused until we do)."""
        if not value:
            return
        try:
            rec = decode(Migration, key, value)
        except CorruptValue:
            return
        if (
            rec.state is _M.DONE
            and rec.target == self.me
            and rec.vm in self.agent.incoming
            and rec.id not in self.tasks
            and rec.id not in self.finished
        ):
            # the transaction that made the record done flipped the placement to us
            self._spawn(rec.id, self._take_over(rec, flipped=True))

    def _spawn(self, mid: str, job: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await job
            except (StoreError, DriverError, TimeoutError) as e:
                log.warning("migration %s: %s", mid, e)
            finally:
                self.wake.set()
                self.agent.wake.set()

        self.tasks[mid] = asyncio.create_task(run(), name=f"migration-{mid}")

    # --- target ----------------------------------------------------------------------
    async def _as_target(self, rec: Migration) -> None:
        busy = rec.id in self.tasks
        if rec.state is _M.PREPARING and not rec.target_address and not busy:
            self._spawn(rec.id, self._prepare(rec))
        elif rec.state is _M.DONE and not busy:
            if time.time() - rec.updated < RECENT_S or rec.vm in self.agent.incoming:
                self._spawn(rec.id, self._take_over(rec))
            else:
                self.finished.add(rec.id)
        elif rec.state in (_M.FAILED, _M.CANCELLED):
            if busy:
                self.tasks[rec.id].cancel()
                return
            await self._discard_incoming(rec)
            self.finished.add(rec.id)

    async def _prepare(self, rec: Migration) -> None:
        self.agent.incoming.add(rec.vm)
        spec = await self._spec(rec.vm)
        try:
            if spec is None:
                raise DriverError(f"vm {rec.vm} has no spec")
            if rec.kind is MigrationKind.QUICK:
                address = FILE_PREFIX + str(self._state_file(spec, rec))
            else:
                config, _ = await read_config(self.store, self.keys)
                address = await self.driver.prepare_incoming(
                    spec, rec.epoch + 1, self.agent.me.address, config.migration
                )
        except DriverError as e:
            await self._fail(rec, f"target {self.me} could not prepare: {e}")
            await self._discard_incoming(rec)
            return

        def set_address(cur: Migration) -> Migration | None:
            if cur.state is not _M.PREPARING or cur.target_address:
                return None
            return cur.model_copy(update={"target_address": address})

        if await change_migration(self.store, self.keys, rec.id, set_address) is None:
            await self._discard_incoming(rec)  # cancelled or failed meanwhile

    async def _take_over(self, rec: Migration, flipped: bool = False) -> None:
        """The placement flipped to us: run the VM (resume it, or restore it from its file).
        ``flipped``: the record was seen becoming done just now, so the placement is ours
        (the same transaction wrote both); otherwise it is read and checked first."""
        epoch = rec.epoch + 1
        placement = None if flipped else await self._placement(rec.vm)
        if not flipped and (
            placement is None or placement.node != self.me or placement.epoch != epoch
        ):
            await self._discard_incoming(rec)  # moved on since; not ours
            self.finished.add(rec.id)
            return
        try:
            if rec.kind is MigrationKind.QUICK:
                await self._restore(rec, epoch)
            else:
                info = await self._settled(rec.vm)
                if info.epoch == epoch and info.state is VMState.PAUSED:
                    await self.driver.resume(rec.vm)
                    await self._record_times(rec)
                elif info.state is not VMState.RUNNING:
                    raise DriverError(f"it is {info.state.value} at epoch {info.epoch}")
        except DriverError as e:
            log.warning("migration %s: could not run %s here: %s", rec.id, rec.vm, e)
            await self.say(
                "migration.resume_failed",
                f"vm/{rec.vm}",
                f"vm {rec.vm} moved to {self.me} but did not run here: {e}",
            )
        finally:
            self.agent.incoming.discard(rec.vm)
            self.finished.add(rec.id)
            self.agent.wake.set()

    async def _settled(self, vm: str, timeout: float = SETTLE_S) -> VMInfo:
        """The incoming VM's state once the driver has seen the end of the stream (the
        source may report completion a moment before the target's QEMU does)."""
        end = time.monotonic() + timeout
        while True:
            info = await self.driver.status(vm)
            if info.state is not VMState.MIGRATING or time.monotonic() > end:
                return info
            await asyncio.sleep(0.005)

    async def _restore(self, rec: Migration, epoch: int) -> None:
        with contextlib.suppress(DriverError):
            info = await self.driver.status(rec.vm)
            if info.epoch == epoch and info.state not in (VMState.STOPPED, VMState.FAILED):
                return  # restored already
        spec = await self._spec(rec.vm)
        if spec is None:
            return
        path = Path(rec.saved_path)
        await self.driver.restore(spec, epoch, path)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(path.unlink)
        await self._record_times(rec)

    async def _record_times(self, rec: Migration) -> None:
        """Downtime as the guest saw it (paused on the source until running here) and the
        total from the request, into the record and the ``migration.done`` event."""
        now = time.time()
        # live: the guest stopped for the transfer's last pass; quick: when the save began
        stopped = rec.transfer_ms if rec.kind is MigrationKind.QUICK else rec.transfer_downtime_ms
        downtime = (stopped or 0.0) + (now - rec.switching_at) * 1000
        total = (now - rec.created) * 1000

        def record(cur: Migration) -> Migration | None:
            return cur.model_copy(update={"downtime_ms": downtime, "total_ms": total})

        await change_migration(self.store, self.keys, rec.id, record)
        transfer = rec.transfer_downtime_ms or 0.0
        await self.say(
            "migration.done",
            f"vm/{rec.vm}",
            f"vm {rec.vm} moved from {rec.source} to {self.me} by {rec.kind.value} migration "
            f"{rec.id}: downtime {downtime:.0f} ms (transfer {transfer:.0f} ms), "
            f"total {total:.0f} ms",
        )

    async def _discard_incoming(self, rec: Migration) -> None:
        """Drop the copy prepared here for ``rec``: it never ran. Even when a failover has
        since placed the VM here at that same epoch (its source died mid-migration), the
        reconcile then starts it afresh rather than adopt a half-received copy."""
        if rec.vm in self.agent.incoming or rec.id in self.tasks:
            try:
                info = await self.driver.status(rec.vm)
            except DriverError:
                info = None
            if (
                info is not None
                and info.epoch == rec.epoch + 1
                and info.state is not VMState.RUNNING
            ):
                await self.driver.discard(rec.vm)
        self.agent.incoming.discard(rec.vm)
        self.agent.wake.set()

    # --- source ----------------------------------------------------------------------
    async def _as_source(self, rec: Migration) -> None:
        busy = rec.id in self.tasks
        if rec.state is _M.PREPARING and rec.target_address and not busy:
            self._spawn(rec.id, self._transfer(rec))
        elif rec.state is _M.TRANSFERRING and not busy:
            # Our transfer is not running (this agent restarted): it cannot finish.
            with contextlib.suppress(DriverError):
                await self.driver.cancel_migration(rec.vm)
            await self._fail(rec, f"the source agent on {self.me} restarted mid-migration")
        elif rec.state in (_M.FAILED, _M.CANCELLED):
            if busy:
                if rec.id not in self.cancelled:
                    self.cancelled.add(rec.id)
                    with contextlib.suppress(DriverError):
                        await self.driver.cancel_migration(rec.vm)
                return
            await self._keep_running(rec)
            self.finished.add(rec.id)
        elif rec.state is _M.DONE and not busy:
            self.migrated_out.pop(rec.vm, None)
            placement = await self._placement(rec.vm)
            if placement is not None and placement.node != self.me:
                await self.driver.discard(rec.vm)
            self.finished.add(rec.id)

    async def _transfer(self, rec: Migration) -> None:
        def start(cur: Migration) -> Migration | None:
            if cur.state is not _M.PREPARING or not cur.target_address:
                return None
            return cur.model_copy(update={"state": _M.TRANSFERRING})

        rec_now = await change_migration(self.store, self.keys, rec.id, start)
        if rec_now is None:
            return
        config, _ = await read_config(self.store, self.keys)
        latest: list[Progress] = []
        publisher = asyncio.create_task(self._publish(rec.id, latest))
        began = time.time()
        try:
            if rec.kind is MigrationKind.QUICK:
                path = Path(rec_now.target_address.removeprefix(FILE_PREFIX))
                await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
                result = await self.driver.save(rec.vm, path)
                saved = str(path)
            else:
                result = await self.driver.migrate_out(
                    rec.vm, rec_now.target_address, config.migration, latest.append
                )
                saved = ""
        except (DriverError, OSError) as e:
            if not isinstance(e, MigrationCancelled):
                await self._fail(rec, f"transfer from {self.me} to {rec.target} failed: {e}")
            return
        finally:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
        self.migrated_out[rec.vm] = rec.id
        log.info("migration %s: transfer done in %.0f ms", rec.id, (time.time() - began) * 1000)

        def switching(cur: Migration) -> Migration | None:
            if cur.state is not _M.TRANSFERRING:
                return None
            return cur.model_copy(
                update={
                    "state": _M.SWITCHING,
                    "progress": result.progress,
                    "transfer_downtime_ms": result.downtime_ms,
                    "transfer_ms": result.total_ms,
                    "saved_path": saved,
                    "switching_at": time.time(),
                }
            )

        if await change_migration(self.store, self.keys, rec.id, switching) is None:
            await self._keep_running(rec)  # cancelled or failed while we finished

    async def _publish(self, mid: str, latest: list[Progress]) -> None:
        written: Progress | None = None
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            if not latest or latest[-1] == written:
                continue
            progress = latest[-1]

            def put(cur: Migration, p: Progress = progress) -> Migration | None:
                if cur.state is not _M.TRANSFERRING:
                    return None
                return cur.model_copy(update={"progress": p})

            with contextlib.suppress(StoreError):
                await change_migration(self.store, self.keys, mid, put)
                written = progress

    async def _keep_running(self, rec: Migration) -> None:
        """The migration failed: if our copy is paused by its transfer and the placement is
        still ours at the same epoch, run it again."""
        if self.migrated_out.get(rec.vm) != rec.id:
            return
        self.migrated_out.pop(rec.vm, None)
        placement = await self._placement(rec.vm)
        if placement is None or placement.node != self.me or placement.epoch != rec.epoch:
            return
        try:
            info = await self.driver.status(rec.vm)
            if info.state is VMState.PAUSED and info.epoch == rec.epoch:
                await self.driver.resume(rec.vm)
                await self.say(
                    "migration.resumed_source",
                    f"vm/{rec.vm}",
                    f"vm {rec.vm} runs on {self.me} again: migration {rec.id} {rec.state.value}",
                )
        except DriverError as e:
            log.warning("could not resume %s after a failed migration: %s", rec.vm, e)

    # --- helpers ---------------------------------------------------------------------
    async def _fail(self, rec: Migration, reason: str) -> None:
        def fail(cur: Migration) -> Migration | None:
            if not cur.active or cur.state is _M.SWITCHING:
                return None  # final already, or the controller decides now
            return cur.model_copy(update={"state": _M.FAILED, "reason": reason})

        if await change_migration(self.store, self.keys, rec.id, fail) is not None:
            await self.say("migration.failed", f"vm/{rec.vm}", f"migration {rec.id}: {reason}")

    def _state_file(self, spec: VMSpec, rec: Migration) -> Path:
        """Where a quick migration's state goes: next to the VM's first disk when that is
        an absolute path (shared by every node), else the cluster's shared state dir."""
        for disk in spec.disks:
            if disk.volume is None and disk.path.startswith("/"):
                return Path(disk.path).parent / f".{rec.vm}-{rec.id}.state"
        return self.state_dir / f"{rec.vm}-{rec.id}.state"

    async def _spec(self, vm: str) -> VMSpec | None:
        kv = await self.store.get(self.keys.vm(vm))
        if kv is None:
            return None
        try:
            return decode(VMSpec, kv.key, kv.value)
        except CorruptValue:
            return None

    async def _placement(self, vm: str) -> Placement | None:
        kv = await self.store.get(self.keys.placement(vm))
        if kv is None:
            return None
        try:
            return decode(Placement, kv.key, kv.value)
        except CorruptValue:
            return None
