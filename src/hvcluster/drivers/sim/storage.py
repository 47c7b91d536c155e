"""The sim driver's storage migration, as a simple model of the qemu driver's block mirrors.

A disk copy takes ``size / params.disk_copy_mib_s`` seconds of the driver's clock, reporting
progress every tick; it can be made to fail (:meth:`SimDriver.fail_next_disk_move`). Where the
disk files exist (``host.check_disks``), their bytes are really copied, so the file a moved VM
uses is there for its next start. A disk's size is its ``size_gib``, else its file's size,
else :data:`DEFAULT_DISK_BYTES`. A shared-nothing target's ``disks_address`` is
``sim-disks:`` and a JSON object: the host it "serves" on (its migration host, as a QEMU
target's NBD server) and the files it created; the source writes its copies there (tests
run every sim host on one machine).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hvcluster.drivers.base import DiskMoveResult, IncomingDisks, MigrationResult, ProgressCallback
from hvcluster.drivers.diskpath import disk_path, incoming_paths
from hvcluster.drivers.errors import DiskMoveFailed, MigrationFailed, SpecError
from hvcluster.drivers.parts import DiskMove, Receive, Send
from hvcluster.drivers.runtime import read_json, vm_dir, write_json
from hvcluster.drivers.sim import model
from hvcluster.drivers.sim.state import SimVM
from hvcluster.models.errors import DriverError
from hvcluster.models.migration import Progress
from hvcluster.models.vm import Disk

if TYPE_CHECKING:
    from hvcluster.drivers.sim.driver import SimDriver

GIB = 1024**3
DEFAULT_DISK_BYTES = GIB
PREFIX = "sim-disks:"
TICK_S = 0.25


class SimStorage:
    """The sim driver's storage migration (its :class:`~hvcluster.drivers.parts.DiskMover`);
    a shared-nothing migration's memory goes through its migration part."""

    def __init__(self, driver: SimDriver) -> None:
        self.driver = driver
        self.copying: set[str] = set()  # VMs copying their disks for a shared-nothing move
        self.copy_cancelled: set[str] = set()
        self.failing: dict[str, str] = {}  # vm -> reason its next disk move or copy fails

    async def cancel_copy(self, name: str) -> None:
        """Stop the disk copy of a shared-nothing migration of ``name``, if one runs."""
        if name in self.copying:
            self.copy_cancelled.add(name)

    def _path(self, disk: Disk, index: int) -> Path:
        return disk_path(disk, index, self.driver.host.volumes)

    def _size(self, disk: Disk, index: int) -> int:
        if disk.size_gib is not None:
            return int(disk.size_gib * GIB)
        with contextlib.suppress(OSError, SpecError):
            return max(os.path.getsize(self._path(disk, index)), 1)
        return DEFAULT_DISK_BYTES

    async def _copy(
        self, vm: SimVM, sources: Sequence[Path], dests: Sequence[Path], sizes: Sequence[int],
        on_progress: ProgressCallback | None, what: str,
    ) -> None:  # fmt: skip
        """The modelled copy: time, progress, an injected failure half-way, the real bytes."""
        total, done = sum(sizes), 0
        fail = self.failing.pop(vm.name, None)
        seconds = total / (self.driver.params.disk_copy_mib_s * model.MIB)
        while done < total:
            step = min(TICK_S, seconds) if seconds > 0 else 0.0
            await self.driver.clock.sleep(step)
            if self._get_or_none(vm.name) is not vm:
                raise DiskMoveFailed(f"vm {vm.name} stopped while {what}")
            done = total if step >= seconds else min(total, done + int(total * step / seconds))
            seconds -= step
            if fail is not None and done * 2 >= total:
                raise DiskMoveFailed(f"vm {vm.name}: {what} failed: {fail}")
            if vm.name in self.copy_cancelled:
                raise DiskMoveFailed(f"vm {vm.name}: {what} was cancelled")
            if on_progress is not None:
                on_progress(Progress(bytes_transferred=done, bytes_total=total,
                                     bytes_remaining=total - done))  # fmt: skip
        for src, dst in zip(sources, dests, strict=True):
            if self.driver.host.check_disks and src.is_file():
                await asyncio.to_thread(shutil.copyfile, src, dst)

    def _get_or_none(self, name: str) -> SimVM | None:
        try:
            return self.driver.get(name)
        except DriverError:
            return None

    async def move(self, name: str, move: DiskMove) -> DiskMoveResult:
        index, dest, on_progress, confirm = move.index, move.dest, move.on_progress, move.confirm
        self.driver.bugs.trip("move_disk", name)
        vm = self.driver.get(name)
        what = f"vm {name} disk {index}"
        if not 0 <= index < len(vm.spec.disks):
            raise SpecError(f"vm {name} has no disk {index}", f"disks[{index}]")
        began = self.driver.clock.wall()
        try:
            old = self._path(vm.spec.disks[index], index)
            new = self._path(dest, index)
            if new.exists():
                raise SpecError(f"{new} exists already; a disk is never moved onto a file", "path")
            size = self._size(vm.spec.disks[index], index)
            new.parent.mkdir(parents=True, exist_ok=True)
            new.touch()
        except (SpecError, OSError) as e:
            raise DiskMoveFailed(f"{what}: cannot move it: {e}") from e
        try:
            await self._copy(vm, [old], [new], [size], on_progress, f"moving {what} to {new}")
            if confirm is not None and not await confirm():
                raise DiskMoveFailed(f"{what}: moving it to {new} was not confirmed")
        except BaseException as e:
            with contextlib.suppress(OSError):
                new.unlink()
            if isinstance(e, OSError):
                raise DiskMoveFailed(f"{what}: moving it to {new} failed: {e}") from e
            raise
        disks = list(vm.spec.disks)
        disks[index] = dest
        vm.spec = vm.spec.model_copy(update={"disks": tuple(disks)})
        self._respec(vm)
        return DiskMoveResult(
            name=name,
            index=index,
            old_path=str(old),
            new_path=str(new),
            bytes_total=size,
            total_ms=(self.driver.clock.wall() - began) * 1000,
        )

    def _respec(self, vm: SimVM) -> None:
        if self.driver.run_dir is None:
            return
        d = vm_dir(self.driver.run_dir, vm.name)
        record = read_json(d / "spec.json")
        if record is not None:
            record["spec"] = vm.spec.model_dump(mode="json")
            with contextlib.suppress(OSError):
                write_json(d / "spec.json", record)

    async def finish_move(self, name: str, index: int, dest: Disk) -> str | None:
        return None  # a sim move is switched the moment it is confirmed

    async def sizes(self, name: str) -> builtins.list[int]:
        vm = self.driver.get(name)
        return [self._size(d, i) for i, d in enumerate(vm.spec.disks)]

    async def receive(self, incoming: Receive) -> IncomingDisks:
        paths = incoming_paths(incoming.spec, incoming.sizes, self.driver.host.volumes)
        made: list[Path] = []
        try:
            for i, path in enumerate(paths):
                if path.exists():
                    raise SpecError(f"{path} exists already", f"disks[{i}].path")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
                made.append(path)
            address = await self.driver.migrations.receive(incoming)
        except (SpecError, MigrationFailed, OSError) as e:
            for path in made:
                with contextlib.suppress(OSError):
                    path.unlink()
            if isinstance(e, OSError):
                raise SpecError(f"cannot create the disks: {e}", "disks") from e
            raise
        host = self.driver.bugs.disks_elsewhere.pop(incoming.spec.name, incoming.host)
        disks_address = PREFIX + json.dumps({"host": host, "paths": [str(p) for p in paths]})
        return IncomingDisks(
            address=address, disks_address=disks_address, paths=tuple(map(str, paths))
        )

    def address_host(self, disks_address: str) -> str:
        return str(_served(disks_address)["host"])

    async def send(self, name: str, send: Send) -> MigrationResult:
        vm, disks_address = self.driver.get(name), send.disks_address
        dests = [Path(p) for p in _served(disks_address)["paths"]]
        sources = [self._path(d, i) for i, d in enumerate(vm.spec.disks)]
        if len(dests) != len(sources):
            raise SpecError(f"{len(dests)} targets for {len(sources)} disks", "disks_address")
        sizes = await self.sizes(name)
        what = f"copying its disks to {disks_address}"
        self.copying.add(name)
        try:
            await self._copy(vm, sources, dests, sizes, send.on_progress, what)
        finally:
            self.copying.discard(name)
            self.copy_cancelled.discard(name)
        return await self.driver.migrations.send(name, send)


def _served(disks_address: str) -> dict[str, Any]:
    """A sim ``disks_address`` read: its ``host`` and ``paths``."""
    try:
        if not disks_address.startswith(PREFIX):
            raise ValueError("no prefix")
        served = json.loads(disks_address.removeprefix(PREFIX))
        if not isinstance(served, dict) or not isinstance(served.get("paths"), list):
            raise ValueError("not an object with paths")
        if not isinstance(served.get("host"), str):
            raise ValueError("no host")
    except ValueError as e:
        raise SpecError(f"{disks_address!r} is not a sim disks address", "disks_address") from e
    return served
