"""VM disks on shared volumes: locks, creation and resizing, deletion.

* **Locks.** While a VM runs, its agent holds ``locks/disk:<volume>:<path>`` for each of its
  disks on a volume, bound to the agent's lease (so a dead node's locks go with it). The start
  transaction takes them (compared absent, or already ours); :meth:`VolumeDisks.sweep`, run
  after each reconcile cycle, takes them for VMs that arrived otherwise (a migration) and
  gives back those of VMs that no longer run here. QEMU's own image locking is the second
  line.
* **Creation.** A disk with ``size_gib`` that does not exist is created with ``qemu-img
  create`` before the VM starts (under its lock); one smaller than ``size_gib`` is grown with
  ``qemu-img resize``. Only files inside a volume are ever created.
* **Deletion.** ``DELETE /vms/<vm>?disks=true`` stores a :class:`DiskDeletion`; an agent
  that sees the volumes deletes the files once no lock is held on them, then the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from hvcluster.agent.run import run_command
from hvcluster.agent.storage import resolve_disk
from hvcluster.models.base import decode
from hvcluster.models.errors import CorruptValue, DriverError
from hvcluster.models.storage import DiskDeletion
from hvcluster.models.vm import Disk, VMSpec
from hvcluster.store.base import Compare, Delete, Put, Store
from hvcluster.store.keys import Keys

log = logging.getLogger(__name__)

GIB = 1024**3
QEMU_IMG_TIMEOUT_S = 60.0
DELETIONS = "delete-disks/"

Say = Callable[[str, str, str], Awaitable[None]]


class DiskError(DriverError):
    """A disk image could not be prepared (created, resized) for its VM."""


class DiskBusy(DiskError):
    """Another node holds the lock of a disk."""


async def qemu_img(*args: str) -> str:
    return await run_command(["qemu-img", *args], QEMU_IMG_TIMEOUT_S, DiskError)


async def virtual_size(path: Path, fmt: str) -> int:
    info = json.loads(await qemu_img("info", "-f", fmt, "--output=json", str(path)))
    return int(info["virtual-size"])


class VolumeDisks:
    def __init__(self, store: Store, keys: Keys, node: str, lease: Callable[[], int]) -> None:
        self.store, self.keys, self.node, self.lease = store, keys, node, lease
        self.mounts: dict[str, Path] = {}  # the volumes this host sees -> where

    # --- locks -----------------------------------------------------------------------
    def lock_key(self, disk: Disk) -> str:
        return self.keys.lock(f"disk:{disk.volume}:{disk.path}")

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
                raise DiskBusy(f"disk {disk.volume}:{disk.path} is locked by {who}")
            puts.append(Put(key, mine, lease=self.lease()))
        return compares, puts

    async def sweep(self, running: set[str], specs: dict[str, VMSpec]) -> None:
        """Hold the locks of the VMs running here; give back those of VMs that do not."""
        held = await self.store.range(self.keys.lock("disk:"))
        wanted = {
            self.lock_key(d): spec.name
            for name in running
            if (spec := specs.get(name)) is not None
            for d in self.on_volumes(spec)
        }
        prefix = f"{self.node} ".encode()
        for kv in held.kvs:
            mine = kv.value.startswith(prefix)
            if mine and wanted.get(kv.key) != kv.value[len(prefix) :].decode():
                await self.store.txn([Compare.value_is(kv.key, kv.value)], [Delete(kv.key)])
        taken = {kv.key for kv in held.kvs}
        for key, vm in wanted.items():
            if key not in taken:
                await self.store.txn(
                    [Compare.absent(key)], [Put(key, self.holder(vm), lease=self.lease())]
                )

    # --- creation --------------------------------------------------------------------
    def path_of(self, disk: Disk) -> Path:
        mount = self.mounts.get(disk.volume or "")
        if mount is None:
            raise DiskError(f"volume {disk.volume!r} is not seen on {self.node}")
        try:
            return resolve_disk(mount, disk.path)
        except ValueError as e:
            raise DiskError(str(e)) from None

    async def prepare(self, spec: VMSpec) -> list[str]:
        """Create missing sized disks, grow smaller ones; say what was done."""
        done = []
        for disk in self.on_volumes(spec):
            if disk.size_gib is None:
                continue
            path = self.path_of(disk)
            size = int(disk.size_gib * GIB)
            if not await asyncio.to_thread(path.exists):  # a volume may be slow (NFS)
                await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
                await qemu_img("create", "-q", "-f", disk.format, str(path), str(size))
                done.append(f"created {disk.volume}:{disk.path} ({disk.size_gib:g} GiB)")
            elif await virtual_size(path, disk.format) < size:
                await qemu_img("resize", "-q", "-f", disk.format, str(path), str(size))
                done.append(f"grew {disk.volume}:{disk.path} to {disk.size_gib:g} GiB")
        return done

    # --- deletion --------------------------------------------------------------------
    async def carry_out_deletions(self, local: Iterable[str], say: Say) -> None:
        """Delete the disks of deleted VMs that asked for it, where it is safe to."""
        found = await self.store.range(self.keys.request(DELETIONS))
        running = set(local)
        for kv in found.kvs:
            try:
                request = decode(DiskDeletion, kv.key, kv.value)
            except CorruptValue as e:
                log.warning("skipping %s", e)
                continue
            vm = request.vm
            if await self.store.get(self.keys.vm(vm)) is not None:
                # a VM of that name exists again: its disks are not the ones to delete
                await self.store.txn([Compare.mod_is(kv.key, kv.mod_revision)], [Delete(kv.key)])
                await say("vm.disks_kept", f"vm/{vm}", f"disks of {vm} kept: it was re-created")
                continue
            if vm in running or any(d.volume not in self.mounts for d in request.disks):
                continue
            locked = [d for d in request.disks if await self.store.get(self.lock_key(d))]
            if locked:
                continue  # still running somewhere; it is being stopped
            gone = []
            for disk in request.disks:
                try:
                    path = self.path_of(disk)
                    await asyncio.to_thread(path.unlink, True)
                    gone.append(f"{disk.volume}:{disk.path}")
                except (DiskError, OSError) as e:
                    log.warning("could not delete disk %s of %s: %s", disk.path, vm, e)
            result = await self.store.txn(
                [Compare.mod_is(kv.key, kv.mod_revision)], [Delete(kv.key)]
            )
            if result.succeeded:
                await say(
                    "vm.disks_deleted", f"vm/{vm}", f"deleted disks of {vm}: {', '.join(gone)}"
                )
