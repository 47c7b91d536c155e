"""The owning agent's part of storage moves: a running VM's disks moved to another volume.

A move is a record at ``requests/storage-moves/<id>`` (see
:mod:`hvcluster.store.migrations`) naming the VM, the node it runs on (source = target)
at a placement epoch, and the destination volume. Only that node's agent acts on it:

1. *requested -> preparing*: the VM still placed here at that epoch and running, this node
   sees the volume (else it fails, saying so), the VM's job key names this move (see
   :mod:`hvcluster.store.jobs`: no migration can start meanwhile), and at least one disk to
   move (writable, not on that volume already);
2. *transferring*: for each such disk, the driver mirrors it onto a new file at the same
   path on the destination volume (progress in the record every :data:`PROGRESS_EVERY` s);
3. once a copy is complete and follows every write (the driver's ``confirm``), ONE
   transaction writes the VM spec with the new path, moves the disk lock (lease-bound) to it
   and updates the record (for the last disk: *switching -> done*), compared on the record,
   the spec and the placement (still here, same epoch) revisions and the job key, and
   records that the cluster created the new file; only then does the guest switch to the
   new file, and the old file is deleted if the cluster created it and no VM's spec names
   it (else it is kept, and the event says why).

Any failure before that transaction: the record fails with the reason, the guest keeps its
old disk, the new file is removed. A cancel (or the controller failing it) stops the copy.
A disk moved before a later one failed stays moved (the spec says so). An agent restarted
mid-move fails the record (QEMU may keep an idle mirror job; see the issue notes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from hvcluster.agent.node import NodeAgent
from hvcluster.agent.owned_jobs import JobFailed, OwnedJobs
from hvcluster.models.base import encode
from hvcluster.models.errors import DriverError, StoreError
from hvcluster.models.event import Say
from hvcluster.models.job import job_of
from hvcluster.models.lifecycle import MigrationState, VMState
from hvcluster.models.migration import Migration, Progress
from hvcluster.models.storage import disk_on_volume, disks_to_move
from hvcluster.models.vm import Disk, Placement, VMSpec
from hvcluster.store.base import Compare, Delete, Put, Store
from hvcluster.store.jobs import busy
from hvcluster.store.keys import Keys
from hvcluster.store.migrations import Change, change_migration, read_moves
from hvcluster.store.reads import read_one
from hvcluster.store.state import read_config

log = logging.getLogger(__name__)

_M = MigrationState
PROGRESS_EVERY = 0.5
RETAIN_S = 7 * 86400.0  # finished records are kept this long
T = TypeVar("T", VMSpec, Placement)
RUNNING = (_M.PREPARING, _M.TRANSFERRING, _M.SWITCHING)


class StorageMover(OwnedJobs):
    what = "storage move"
    retain_s = RETAIN_S

    def __init__(self, store: Store, keys: Keys, agent: NodeAgent, say: Say) -> None:
        super().__init__(store, keys, agent, say, keys.storage_move())
        self.checked: set[str] = set()  # done records seen switched (see _finish)
        self.given_up: set[str] = set()  # records whose step raised unexpectedly here
        self.cycles = 0  # cycles begun (tests wait on it: 'a later cycle did not retry')

    # --- the loop (OwnedJobs.run: when it stops, so do the copies and their mirrors) ----
    async def cycle(self) -> None:
        self.cycles += 1
        self.forget_ended_tasks()
        records = sorted((await read_moves(self.store, self.keys)).items.items())
        mine = [
            (mid, s.value, s.mod_revision)
            for mid, s in records
            if s.value.source == self.me and mid not in self.given_up
        ]
        for mid, rec, rev in mine:  # first: moves done by an agent before us, and old records
            await self._guarded(rec, self._tidy(mid, rec, rev))
        for mid, rec, _ in mine:
            await self._guarded(rec, self._step(mid, rec))

    async def _tidy(self, mid: str, rec: Migration, rev: int) -> None:
        if rec.state is _M.DONE and mid not in self.checked and mid not in self.tasks:
            self.checked.add(mid)
            await self._finish(rec)
        await self.prune_if_old(self.keys.storage_move(mid), rec, rev)

    async def _step(self, mid: str, rec: Migration) -> None:
        task = self.tasks.get(mid)
        if rec.state is _M.REQUESTED and task is None:
            self.tasks[mid] = asyncio.create_task(self._run(rec), name=f"storage-{mid}")
        elif rec.state in RUNNING and task is None:
            why = f"the agent on {self.me} restarted mid-move; {rec.vm} keeps its old disks"
            await self._fail(rec.id, rec.vm, why)
            await self._remove_copies(rec)
        elif rec.state in (_M.FAILED, _M.CANCELLED) and task is not None:
            task.cancel()  # cancelled or failed by someone else: stop copying

    async def _guarded(self, rec: Migration, step: Awaitable[None]) -> None:
        """Run one record's step so that an unexpected exception is that record's: logged
        with its traceback, the record failed with the reason if under way (else said as
        ``storage.move_error``), and given up here (never retried: no crash loop). Store
        errors pass: the next cycle tries again."""
        try:
            await step
        except (StoreError, TimeoutError):
            raise
        except Exception as e:
            log.error("storage move %s of %s", rec.id, rec.vm, exc_info=e)
            self.given_up.add(rec.id)
            why = f"unexpected error on {self.me}: {type(e).__name__}: {e}"
            if not await self._fail(rec.id, rec.vm, why):
                await self.say(
                    "storage.move_error", f"vm/{rec.vm}", f"storage move {rec.id}: {why}"
                )

    # --- one move --------------------------------------------------------------------
    async def _run(self, rec: Migration) -> None:
        latest: list[Progress] = []
        publisher = asyncio.create_task(self._publish(rec.id, latest))
        moved: list[str] = []
        try:
            spec, disks = await self._accept(rec)
            timeout = (await read_config(self.store, self.keys))[0].migration.timeout_s
            for n, index in enumerate(disks):
                old, new = spec.disks[index], disk_on_volume(spec.disks[index], rec.vm, rec.volume)
                confirm = functools.partial(self._commit, rec, index, old, new, n == len(disks) - 1)
                await self._about_to_create(new, spec)
                await self.driver.move_disk(rec.vm, index, new, latest.append, timeout, confirm)
                now = await self.read.spec(rec.vm) or spec
                if now.disks[index] != new and not await confirm():
                    raise JobFailed(f"disk {index} was switched but its new path not recorded")
                moved.append(f"disk {index} to {new.file}")
                kept = await self.agent.disks.delete_if_ours(old, rec.vm, spec.uid)
                if kept is not None:
                    moved[-1] += f" (old file {old.file} kept: {kept})"
            total = (self.agent.clock.wall() - rec.created) * 1000
            await self.say(
                "storage.moved",
                f"vm/{rec.vm}",
                f"vm {rec.vm} moved {', '.join(moved)} on {self.me} while running "
                f"(storage move {rec.id}, {total:.0f} ms)",
            )
        except (JobFailed, DriverError, StoreError, TimeoutError) as e:
            done = f" ({', '.join(moved)} moved before)" if moved else ""
            await self._fail(rec.id, rec.vm, f"{e}{done}")
        except Exception as e:  # a bug: this record fails with it, the agent goes on
            log.exception("storage move %s", rec.id)
            why = f"unexpected error on {self.me}: {type(e).__name__}: {e}"
            await self._fail(
                rec.id, rec.vm, why + (f" ({', '.join(moved)} moved before)" if moved else "")
            )
        finally:
            self.checked.add(rec.id)  # nothing left for _finish
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher

    async def _finish(self, rec: Migration) -> None:
        """A done move: if the agent that ran it went away between the commit and the switch,
        the guest still uses the old file (its copy following every write): switch it now."""
        spec = await self.read.spec(rec.vm)
        try:
            info = await self.driver.status(rec.vm)
        except DriverError:
            return
        if spec is None or info.state not in (VMState.RUNNING, VMState.PAUSED):
            return
        for index, disk in enumerate(spec.disks):
            if disk.volume != rec.volume:
                continue
            try:
                old = await self.driver.finish_disk_move(rec.vm, index, disk)
            except DriverError as e:
                log.warning("storage move %s: disk %s not switched: %s", rec.id, index, e)
                continue
            if old is not None:
                was = await asyncio.to_thread(self.agent.disks.disk_at, old)
                why = "not on a volume seen here"
                if was is not None:
                    why = await self.agent.disks.delete_if_ours(was, rec.vm, spec.uid) or ""
                fate = f"kept: {why}" if why else "deleted"
                await self.say(
                    "storage.moved",
                    f"vm/{rec.vm}",
                    f"vm {rec.vm} disk {index} switched to {disk.file}, the move {rec.id} "
                    f"its previous agent committed (old file {old} {fate})",
                )

    async def _accept(self, rec: Migration) -> tuple[VMSpec, list[int]]:
        """The checks of step 1; the record moves to transferring. Raises JobFailed."""
        spec = await self.read.spec(rec.vm)
        placement = await self.read.placement(rec.vm)
        if spec is None or placement is None:
            raise JobFailed(f"vm {rec.vm} has no spec or placement any more")
        if (placement.node, placement.epoch) != (self.me, rec.epoch):
            raise JobFailed(f"vm {rec.vm} is now placed on {placement.node}, not here")
        if rec.volume not in self.agent.disks.mounts:
            raise JobFailed(f"node {self.me} does not see volume {rec.volume!r}")
        try:
            info = await self.driver.status(rec.vm)
        except DriverError:
            info = None
        if info is None or info.state is not VMState.RUNNING:
            state = info.state.value if info else "not running"
            raise JobFailed(f"vm {rec.vm} is {state} on {self.me}; only a running VM moves")
        await self._holds_the_vm(rec)
        disks = disks_to_move(spec, rec.volume)
        if not disks:
            raise JobFailed(f"vm {rec.vm} has no writable disk off volume {rec.volume!r}")
        for state in (_M.PREPARING, _M.TRANSFERRING):
            if await self._change(rec.id, _step(state)) is None:
                raise JobFailed("the move was cancelled")
        return spec, disks

    async def _holds_the_vm(self, rec: Migration) -> Compare:
        """The VM's job key names this move (it was created with it: no migration can start
        meanwhile); the compare that keeps it so in the commit. Raises JobFailed."""
        key, value = self.keys.job(rec.vm), encode(job_of(rec))
        kv = await self.store.get(key)
        if kv is None or kv.value != value:
            why = await busy(self.store, self.keys, rec.vm)
            raise JobFailed(why or f"vm {rec.vm} is not held by storage move {rec.id}")
        return Compare.value_is(key, value)

    async def _commit(self, rec: Migration, index: int, old: Disk, new: Disk, last: bool) -> bool:
        """The one transaction that makes ``new`` the VM's disk ``index`` (see step 3)."""
        try:
            return await self._write(rec, index, old, new, last)
        except (StoreError, TimeoutError) as e:
            # The transaction may have landed: the spec says which (the guest must follow it).
            log.warning("storage move %s: commit of disk %s: %s; re-reading", rec.id, index, e)
            for _ in range(5):
                with contextlib.suppress(StoreError, TimeoutError):
                    spec = await self.read.spec(rec.vm)
                    return spec is not None and spec.disks[index] == new
                await asyncio.sleep(0.5)
            raise

    async def _write(self, rec: Migration, index: int, old: Disk, new: Disk, last: bool) -> bool:
        held = await self._holds_the_vm(rec)
        skv = await read_one(self.store, self.keys.vm(rec.vm), VMSpec)
        pkv = await read_one(self.store, self.keys.placement(rec.vm), Placement)
        if skv is None or pkv is None:
            return False
        spec, placement = skv.value, pkv.value
        if len(spec.disks) <= index:
            return False
        if spec.disks[index] != old or (placement.node, placement.epoch) != (self.me, rec.epoch):
            return False
        disks = list(spec.disks)
        disks[index] = new
        updated = spec.model_copy(update={"disks": tuple(disks)})
        compares = [
            Compare.mod_is(skv.key, skv.mod_revision),
            Compare.mod_is(pkv.key, pkv.mod_revision),
            held,
        ]
        # the new file is the cluster's (the move created it): recorded with the switch
        created = self.agent.disks.created_put(new, spec)
        ops: list[Put | Delete] = [Put(skv.key, encode(updated)), created]
        await self._move_lock(rec.vm, old, new, compares, ops)
        if last and await self._change(rec.id, _step(_M.SWITCHING)) is None:
            return False  # cancelled meanwhile
        after = _M.DONE if last else _M.TRANSFERRING
        done = await self._change(rec.id, _step(after), compares, ops)
        if done is None and last:
            await self._fail(rec.id, rec.vm, "the VM's spec or placement changed during the move")
        return done is not None

    async def _move_lock(
        self, vm: str, old: Disk, new: Disk, compares: list[Compare], ops: list[Put | Delete]
    ) -> None:
        disks, mine = self.agent.disks, self.agent.disks.holder(vm)
        if old.volume is not None:
            kv = await self.store.get(disks.lock_key(old))
            if kv is not None and kv.value == mine:
                compares.append(Compare.value_is(kv.key, mine))
                ops.append(Delete(kv.key))
        key = disks.lock_key(new)
        kv = await self.store.get(key)
        if kv is not None and kv.value != mine:
            raise JobFailed(f"disk {new.volume}:{new.path} is locked by {kv.value.decode()}")
        compares.append(Compare.value_is(key, mine) if kv else Compare.absent(key))
        ops.append(Put(key, mine, lease=disks.lease()))

    async def _about_to_create(self, new: Disk, spec: VMSpec) -> None:
        """Record that the cluster creates ``new``'s file (the copy), before it does, so
        that a copy left half-way by an agent that died can be removed; a file already
        there is never the cluster's (the driver refuses to copy onto it)."""
        path = await asyncio.to_thread(self.agent.disks.path_of, new)
        if await asyncio.to_thread(path.exists):
            raise JobFailed(f"{new.file} exists already; a disk is never moved onto a file")
        await self.agent.disks.record_created(new, spec)

    async def _remove_copies(self, rec: Migration) -> None:
        """The new files of a move that will not finish: those the cluster created for the
        VM that no VM's spec names (the old agent may have died before it made them, and a
        file of that name may be another VM's disk or an admin's)."""
        spec = await self.read.spec(rec.vm)
        if spec is None:
            return
        for i in disks_to_move(spec, rec.volume):
            new = disk_on_volume(spec.disks[i], rec.vm, rec.volume)
            with contextlib.suppress(DriverError, OSError):
                await self.agent.disks.delete_if_ours(new, rec.vm, spec.uid)

    async def _publish(self, mid: str, latest: list[Progress]) -> None:
        written: Progress | None = None
        while True:
            await self.agent.clock.sleep(PROGRESS_EVERY)
            if not latest or latest[-1] == written:
                continue
            progress = latest[-1]

            def put(cur: Migration, p: Progress = progress) -> Migration | None:
                if cur.state is not _M.TRANSFERRING:
                    return None
                return cur.model_copy(update={"progress": p})

            with contextlib.suppress(StoreError):
                await self._change(mid, put)
                written = progress

    async def _change(
        self,
        mid: str,
        change: Change,
        compares: Sequence[Compare] = (),
        ops: Sequence[Put | Delete] = (),
    ) -> Migration | None:
        return await change_migration(
            self.store,
            self.keys,
            mid,
            change,
            compares,
            ops,
            storage=True,
            now=self.agent.clock.wall(),
        )

    async def _fail(self, mid: str, vm: str, reason: str) -> bool:
        def fail(cur: Migration) -> Migration | None:
            if not cur.active:
                return None
            return cur.model_copy(update={"state": _M.FAILED, "reason": reason})

        with contextlib.suppress(StoreError):
            if await self._change(mid, fail) is not None:
                await self.say("storage.move_failed", f"vm/{vm}", f"storage move {mid}: {reason}")
                return True
        return False


def _step(state: MigrationState) -> Callable[[Migration], Migration | None]:
    def step(cur: Migration) -> Migration | None:
        if not cur.active:
            return None
        if cur.state is state:
            return cur  # a further disk, still transferring
        return cur.model_copy(update={"state": state})

    return step
