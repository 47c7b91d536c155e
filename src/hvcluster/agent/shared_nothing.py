"""Shared-nothing migration: a live migration whose record names a ``volume`` of the target
(``hvc vm move NAME --to NODE --with-storage VOLUME``). The disks travel with the memory:

* source, as soon as it sees the record: the disks' virtual sizes into ``disk_sizes`` (the
  target cannot read the source's files);
* target, on ``preparing`` once the sizes are there: creates every disk of the VM on the
  volume (same relative paths, empty, same sizes), starts the incoming VM on them, serves
  them over NBD and writes ``disks_address``, then ``target_address`` as usual;
* source, on ``transferring``: mirrors every disk into the target's exports while the guest
  runs (write-blocking once ready), then migrates memory as a live migration does;
* the flip transaction also rewrites the VM's spec with the disks on the volume (compared on
  the spec's revision): the placement and the disk paths change together;
* after the flip the source deletes its old files; after a failure the target deletes the
  files it created. Either only if the cluster created them (the target records each file
  it creates) and no VM's spec names them: an old file an admin made is kept, with an event.

Every disk moves (a read-only disk, or one on the volume already, is refused by the API).
The roles of :mod:`hvcluster.agent.migration_source` / ``migration_target`` call in here.
"""

from __future__ import annotations

import logging

from hvcluster.agent.node import NodeAgent
from hvcluster.drivers.base import CompletionHook, MigrationResult, ProgressCallback
from hvcluster.models.config import MigrationSettings
from hvcluster.models.errors import DriverError
from hvcluster.models.lifecycle import MigrationState
from hvcluster.models.migration import Migration
from hvcluster.models.storage import spec_on_volume
from hvcluster.models.vm import Disk, VMSpec
from hvcluster.store.base import Store
from hvcluster.store.keys import Keys
from hvcluster.store.migrations import change_migration
from hvcluster.store.reads import Reader

log = logging.getLogger(__name__)
_M = MigrationState


def shared_nothing(rec: Migration) -> bool:
    return bool(rec.volume) and rec.source != rec.target


class SharedNothing:
    def __init__(self, store: Store, keys: Keys, agent: NodeAgent) -> None:
        self.store, self.keys, self.agent = store, keys, agent
        self.driver = agent.driver
        self.read = Reader(store, keys)
        # record -> (disks, the VM's uid): the files made here (target), or to delete (source)
        self.created: dict[str, tuple[tuple[Disk, ...], str]] = {}
        self.old_files: dict[str, tuple[tuple[Disk, ...], str]] = {}
        self.sizing: set[str] = set()  # records whose sizes this source is writing

    # --- source ----------------------------------------------------------------------
    async def publish_sizes(self, rec: Migration) -> None:
        """The disks' sizes into the record, once (the target waits for them)."""
        if rec.disk_sizes or rec.id in self.sizing or not rec.active:
            return
        self.sizing.add(rec.id)
        try:
            sizes = tuple(await self.driver.disk_sizes(rec.vm))

            def put(cur: Migration) -> Migration | None:
                if cur.disk_sizes or not cur.active:
                    return None
                return cur.model_copy(update={"disk_sizes": sizes})

            await change_migration(self.store, self.keys, rec.id, put, now=self.agent.clock.wall())
        except DriverError as e:
            log.warning("migration %s: sizes of %s's disks: %s", rec.id, rec.vm, e)
        finally:
            self.sizing.discard(rec.id)

    async def migrate_out(
        self,
        rec: Migration,
        address: str,
        settings: MigrationSettings,
        on_progress: ProgressCallback | None,
        on_complete: CompletionHook | None,
    ) -> MigrationResult:
        """The transfer: disks into the target's exports, then memory."""
        spec = await self.read.spec(rec.vm)
        if spec is None:
            raise DriverError(f"vm {rec.vm} has no spec")
        self.old_files[rec.id] = (spec.disks, spec.uid)
        return await self.driver.migrate_out(
            rec.vm, address, settings, on_progress, on_complete, disks_address=rec.disks_address
        )

    async def delete_old_files(self, rec: Migration) -> None:
        """The flip wrote the new paths and the paused copy here is gone: the old files go."""
        await self._delete(rec, self.old_files.pop(rec.id, ((), "")), "old")

    def forget(self, rec: Migration) -> None:
        self.old_files.pop(rec.id, None)

    # --- target ----------------------------------------------------------------------
    def ready_to_prepare(self, rec: Migration) -> bool:
        return not shared_nothing(rec) or bool(rec.disk_sizes)

    async def prepare(self, rec: Migration, spec: VMSpec, settings: MigrationSettings) -> str:
        """Create the disks on the volume, start the incoming VM on them, serve them; write
        ``disks_address`` into the record. Returns the memory's address."""
        if rec.volume not in self.agent.disks.mounts:
            raise DriverError(f"{self.agent.me.name} does not see volume {rec.volume!r}")
        target = spec_on_volume(spec, rec.volume)
        await self._clear_leftovers(target)
        incoming = await self.driver.prepare_incoming_with_disks(
            target, rec.epoch + 1, self.agent.me.migration_host, rec.disk_sizes, settings
        )
        self.created[rec.id] = (target.disks, spec.uid)
        for disk in target.disks:  # the cluster's own files: only such are ever deleted
            await self.agent.disks.record_created(disk, target)

        def put(cur: Migration) -> Migration | None:
            if cur.state is not _M.PREPARING or cur.target_address:
                return None
            return cur.model_copy(update={"disks_address": incoming.disks_address})

        if (
            await change_migration(self.store, self.keys, rec.id, put, now=self.agent.clock.wall())
            is None
        ):
            raise DriverError("the migration moved on while its disks were prepared")
        return incoming.address

    async def delete_created(self, rec: Migration) -> None:
        """The incoming copy was discarded (the migration failed): its new files go."""
        await self._delete(rec, self.created.pop(rec.id, ((), "")), "unused new")

    def keep_created(self, rec: Migration) -> None:
        """The VM runs here now on the files created for it."""
        self.created.pop(rec.id, None)

    # --- helpers ---------------------------------------------------------------------
    async def _clear_leftovers(self, target: VMSpec) -> None:
        """Files where the disks go, left by an earlier attempt whose agent went away: only
        those the cluster created for this VM that no VM's spec names (creating over any
        other file is refused)."""
        for disk in target.disks:
            if await self.agent.disks.delete_if_ours(disk, target.name, target.uid) is None:
                log.info("cleared %s, left by an earlier migration of %s", disk.file, target.name)

    async def _delete(self, rec: Migration, files: tuple[tuple[Disk, ...], str], what: str) -> None:
        """Delete ``files`` the cluster created for the VM that no VM's spec names (never a
        file the VM may be using, whatever happened since); say which were kept and why."""
        disks, uid = files
        kept = []
        for disk in disks:
            why = await self.agent.disks.delete_if_ours(disk, rec.vm, uid)
            if why is None:
                log.info("migration %s: deleted %s's %s disk %s", rec.id, rec.vm, what, disk.file)
            else:
                kept.append(f"{disk.file} ({why})")
        if kept:
            await self.agent.say(
                "vm.disks_kept",
                f"vm/{rec.vm}",
                f"migration {rec.id}: kept {what} disk files of {rec.vm}: {'; '.join(kept)}",
            )
