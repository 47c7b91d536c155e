"""VM disks on shared volumes: locks, creation and resizing, deletion.

* **Names.** A disk is ``VOLUME:relative/path`` (or an absolute path under a directory the
  cluster config allows), canonical from its model on (:attr:`Disk.file`): locks, records
  and deletions all use that one form. On the host, the path is resolved (symlinks followed)
  and refused if it leaves its volume or allowed directory (:meth:`VolumeDisks.path_of`).
* **Locks.** While a VM runs, its agent holds ``locks/disk:<VOLUME:path>`` for each of its
  disks on a volume, bound to the agent's lease (so a dead node's locks go with it). The start
  transaction takes them (compared absent, or already ours); :meth:`VolumeDisks.sweep`, run
  after each reconcile cycle, takes them for VMs that arrived otherwise (a migration) and
  gives back those of VMs that no longer run here. QEMU's own image locking is the second
  line.
* **Creation.** A disk with ``size_gib`` that does not exist is created with ``qemu-img
  create`` before the VM starts (under its lock); one smaller than ``size_gib`` is grown with
  ``qemu-img resize``. Only files inside a volume are ever created, and each is recorded
  (``disks/<VOLUME:path>``, a :class:`CreatedDisk`).
* **Deletion.** ``DELETE /vms/<vm>?disks=true`` stores a :class:`DiskDeletion`; an agent
  that sees the volumes deletes the files once no lock is held on them, then the request.
  A file is deleted only if the cluster created it for that VM and no VM's spec names it;
  otherwise it is kept, and an event says why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hvcluster.host import qemuimg
from hvcluster.host.storage import resolve_allowed, resolve_disk
from hvcluster.models.base import encode
from hvcluster.models.errors import CorruptValue, DriverError
from hvcluster.models.event import Say
from hvcluster.models.storage import CreatedDisk, DiskDeletion
from hvcluster.models.vm import Disk, VMSpec
from hvcluster.store.base import Compare, Delete, Put, Store
from hvcluster.store.keys import Keys
from hvcluster.store.reads import read_kind, read_one_or_error, read_prefix
from hvcluster.store.state import read_config

log = logging.getLogger(__name__)

GIB = 1024**3
DELETIONS = "delete-disks/"
RESWEEP_S = 30.0  # the disk locks read again at least this often (VolumeDisks.sweep)


@dataclass(frozen=True)
class NamedFiles:
    """What VM specs name, read once for a batch of deletions."""

    by_file: dict[str, str]  # a disk file (Disk.file) -> one VM whose spec names it
    unreadable: tuple[str, ...]  # VMs whose spec does not decode: they may name any file


class DiskError(DriverError):
    """A disk image could not be prepared (created, resized) for its VM."""


class DiskBusy(DiskError):
    """Another node holds the lock of a disk."""


class VolumeDisks:
    def __init__(self, store: Store, keys: Keys, node: str, lease: Callable[[], int]) -> None:
        self.store, self.keys, self.node, self.lease = store, keys, node, lease
        self.mounts: dict[str, Path] = {}  # the volumes this host sees -> where
        self._settled: dict[str, str] | None = None  # the locks the last sweep left held
        self._swept_at = 0.0

    # --- locks -----------------------------------------------------------------------
    def lock_key(self, disk: Disk) -> str:
        return self.keys.lock(f"disk:{disk.file}")

    def holder(self, vm: str) -> bytes:
        return f"{self.node} {vm}".encode()

    @staticmethod
    def on_volumes(spec: VMSpec) -> list[Disk]:
        return [d for d in spec.disks if d.volume is not None]

    async def lock_ops(self, spec: VMSpec) -> tuple[list[Compare], list[Put]]:
        """The compares and puts that take ``spec``'s disk locks in the start transaction.
        Raises :class:`DiskBusy` naming the holder when one is held by someone else."""
        compares: list[Compare] = []
        puts: list[Put] = []
        mine = self.holder(spec.name)
        for disk in self.on_volumes(spec):
            key = self.lock_key(disk)
            kv = await self.store.get(key)
            if kv is None:
                compares.append(Compare.absent(key))
            elif kv.value == mine and kv.lease == self.lease():
                compares.append(Compare.value_is(key, mine))
            else:
                who = kv.value.decode(errors="replace")
                raise DiskBusy(f"disk {disk.file} is locked by {who}")
            puts.append(Put(key, mine, lease=self.lease()))
        return compares, puts

    async def sweep(self, running: set[str], specs: dict[str, VMSpec], now: float) -> None:
        """Hold the locks of the VMs running here; give back those of VMs that do not.

        Every disk lock of the cluster is read for it (they are named by file, not by node),
        so a sweep runs when the locks this host should hold change, while the last sweep
        could not take one (another holds it), or every :data:`RESWEEP_S` (``now``: the
        agent's clock): not every cycle of 64 agents over 8,000 VMs' disks."""
        wanted = {
            self.lock_key(d): spec.name
            for name in running
            if (spec := specs.get(name)) is not None
            for d in self.on_volumes(spec)
        }
        if wanted == self._settled and now - self._swept_at < RESWEEP_S:
            return
        held = await self.store.range(self.keys.lock("disk:"))
        prefix = f"{self.node} ".encode()
        settled = True
        for kv in held.kvs:
            mine = kv.value.startswith(prefix)
            if mine and wanted.get(kv.key) != kv.value[len(prefix) :].decode():
                await self.store.txn([Compare.value_is(kv.key, kv.value)], [Delete(kv.key)])
            elif not mine and kv.key in wanted:
                settled = False  # another holds it: tried again next cycle
        taken = {kv.key for kv in held.kvs}
        for key, vm in wanted.items():
            if key not in taken:
                put = Put(key, self.holder(vm), lease=self.lease())
                settled = (await self.store.txn([Compare.absent(key)], [put])).succeeded and settled
        self._settled = wanted if settled else None
        self._swept_at = now

    # --- where a disk is on this host --------------------------------------------------
    def path_of(self, disk: Disk, allowed: Sequence[str] = ()) -> Path:
        """Where ``disk`` is on this host, as its file system resolves it: inside its
        volume's mount, or (an absolute disk) inside one of the ``allowed`` directories.
        :class:`DiskError` when it is not (a symlink leading out, a volume not seen here)."""
        try:
            if disk.volume is None:
                return resolve_allowed(disk.path, allowed)
            mount = self.mounts.get(disk.volume)
            if mount is None:
                raise DiskError(f"volume {disk.volume!r} is not seen on {self.node}")
            return resolve_disk(mount, disk.path)
        except ValueError as e:
            raise DiskError(str(e)) from None

    def disk_at(self, path: Path | str) -> Disk | None:
        """The disk on a volume seen here whose file ``path`` is (as resolved), if any."""
        full = Path(path).resolve()
        for volume, mount in self.mounts.items():
            root = Path(mount).resolve()
            if full != root and full.is_relative_to(root):
                return Disk(volume=volume, path=str(full.relative_to(root)))
        return None

    async def allowed_dirs(self) -> tuple[str, ...]:
        """The cluster config's ``allowed_disk_dirs``, read now (an admin may change it)."""
        config, _ = await read_config(self.store, self.keys)
        return config.allowed_disk_dirs

    async def check(self, spec: VMSpec) -> None:
        """Refuse (:class:`DiskError` naming the field) a spec naming a disk outside its
        volume, or a disk, kernel or initrd outside the allowed directories, as this host
        resolves the paths."""
        allowed = await self.allowed_dirs()
        for i, disk in enumerate(spec.disks):
            try:
                await asyncio.to_thread(self.path_of, disk, allowed)
            except DiskError as e:
                raise DiskError(f"disks[{i}].path: {e}") from None
        for field, path in spec.boot.files():
            try:
                await asyncio.to_thread(resolve_allowed, path, allowed)
            except ValueError as e:
                raise DiskError(f"boot.{field}: {e}") from None

    # --- creation --------------------------------------------------------------------
    async def prepare(self, spec: VMSpec) -> list[str]:
        """Check every disk's path; create missing sized disks on volumes (recording that
        the cluster created them), grow smaller ones; say what was done."""
        await self.check(spec)
        done = []
        for disk in self.on_volumes(spec):
            if disk.size_gib is None:
                continue
            path = self.path_of(disk)
            size = int(disk.size_gib * GIB)
            if not await asyncio.to_thread(path.exists):  # a volume may be slow (NFS)
                await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
                await qemuimg.create(path, disk.format, size, DiskError)
                await self.record_created(disk, spec)
                done.append(f"created {disk.file} ({disk.size_gib:g} GiB)")
            elif await qemuimg.virtual_size(path, disk.format, DiskError) < size:
                await qemuimg.resize(path, disk.format, size, DiskError)
                done.append(f"grew {disk.file} to {disk.size_gib:g} GiB")
        return done

    def created_put(self, disk: Disk, spec: VMSpec) -> Put:
        """The write that records the cluster created ``disk``'s file for ``spec``."""
        record = CreatedDisk(
            file=disk.file, vm=spec.name, uid=spec.uid, node=self.node, created_at=time.time()
        )
        return Put(self.keys.created_disk(disk.file), encode(record))

    async def record_created(self, disk: Disk, spec: VMSpec) -> None:
        """Record that the cluster created ``disk``'s file for ``spec`` (after creating it:
        a crash in between leaves a file the cluster will never delete, the safe side)."""
        await self.store.txn((), [self.created_put(disk, spec)])

    async def forget_created(self, disk: Disk) -> None:
        await self.store.txn((), [Delete(self.keys.created_disk(disk.file))])

    # --- deletion --------------------------------------------------------------------
    async def carry_out_deletions(self, local: Iterable[str], say: Say) -> None:
        """Delete the disks of deleted VMs that asked for it, where it is safe to."""
        prefix = self.keys.request(DELETIONS)
        found = await read_prefix(self.store, prefix, DiskDeletion)
        running = set(local)
        for kv in found.items.values():
            request = kv.value
            vm = request.vm
            if await self.store.get(self.keys.vm(vm)) is not None:
                # a VM of that name exists again: its disks are not the ones to delete
                await self.store.txn([Compare.mod_is(kv.key, kv.mod_revision)], [Delete(kv.key)])
                await say("vm.disks_kept", f"vm/{vm}", f"disks of {vm} kept: it was re-created")
                continue
            if vm in running or any(d.volume not in self.mounts for d in request.disks):
                continue
            if await self._still_held(request):
                continue  # still running somewhere; it is being stopped
            gone, kept = [], []
            named = await self.named_files()
            for disk in request.disks:
                why = await self.delete_if_ours(disk, vm, request.uid, named)
                if why is None:
                    gone.append(disk.file)
                else:
                    kept.append(f"{disk.file} ({why})")
            result = await self.store.txn(
                [Compare.mod_is(kv.key, kv.mod_revision)], [Delete(kv.key)]
            )
            if result.succeeded and gone:
                await say(
                    "vm.disks_deleted", f"vm/{vm}", f"deleted disks of {vm}: {', '.join(gone)}"
                )
            if result.succeeded and kept:
                await say("vm.disks_kept", f"vm/{vm}", f"kept disks of {vm}: {'; '.join(kept)}")

    async def _still_held(self, request: DiskDeletion) -> bool:
        """Does a node still hold the lock of one of the deleted VM's disks (it is still
        being stopped)? A lock another VM holds (a shared read-only file) does not count:
        that file is kept anyway, its VM's spec names it."""
        for disk in request.disks:
            kv = await self.store.get(self.lock_key(disk))
            if kv is not None and kv.value.decode(errors="replace").endswith(f" {request.vm}"):
                return True
        return False

    async def delete_if_ours(
        self, disk: Disk, vm: str, uid: str = "", named: NamedFiles | None = None
    ) -> str | None:
        """Delete ``disk``'s file if the cluster created it for ``vm`` (uid ``uid``) and no
        VM's spec names it; None when deleted (or already gone), else why it was kept.
        ``named``: :meth:`named_files`, when the caller read it already."""
        if disk.volume is None:
            return "it is not on a volume"
        if disk.volume not in self.mounts:
            return f"volume {disk.volume} is not seen on {self.node}"
        if named is None:
            named = await self.named_files()
        why = await self._why_keep(disk, vm, uid, named)
        if why is not None:
            return why
        try:
            path = await asyncio.to_thread(self.path_of, disk)
            await asyncio.to_thread(path.unlink, True)
        except (DiskError, OSError) as e:
            return f"could not delete it: {e}"
        await self.forget_created(disk)
        log.info("deleted %s (%s), created by the cluster for %s", disk.file, path, vm)
        return None

    async def named_files(self) -> NamedFiles:
        """Every disk file a VM spec names -> one VM naming it; and the VMs whose spec
        cannot be read (any file may be theirs)."""
        specs = await read_kind(self.store, self.keys, "vms", VMSpec)
        named: dict[str, str] = {}
        for name, stored in specs.items.items():
            for disk in stored.value.disks:
                named.setdefault(disk.file, name)
        return NamedFiles(named, tuple(sorted(specs.unreadable)))

    async def _why_keep(self, disk: Disk, vm: str, uid: str, named: NamedFiles) -> str | None:
        """Why ``disk`` must not be deleted as ``vm``'s, or None if it may be."""
        if disk.file in named.by_file:
            return f"vm {named.by_file[disk.file]} names it"
        if named.unreadable:
            return f"the spec of vm {', '.join(named.unreadable)} cannot be read: it may name it"
        found = await read_one_or_error(self.store, self.keys.created_disk(disk.file), CreatedDisk)
        if found is None:
            return "the cluster did not create it"
        if isinstance(found, CorruptValue):
            return f"its creation record is unreadable: {found}"
        record = found.value
        if record.vm != vm or (record.uid and uid and record.uid != uid):
            return f"the cluster created it for another vm {record.vm}"
        try:
            real = await asyncio.to_thread(self.path_of, disk)
        except DiskError as e:
            return str(e)
        root = await asyncio.to_thread(Path(self.mounts[disk.volume or ""]).resolve)
        if real != root / disk.path:
            return f"it is (or lies under) a symlink, to {real}"
        return None
