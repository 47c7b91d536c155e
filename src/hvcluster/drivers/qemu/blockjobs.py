"""Block jobs over QMP: storage migration of a running VM's disks.

* **Moving a disk** to a new file on this host: the new image is created empty (same virtual
  size and format, thin) with ``qemu-img``, opened with ``blockdev-add``, and the disk's
  block backend (``disk<i>``, named by :mod:`hvcluster.drivers.qemu.cmdline`) is mirrored
  onto it (``blockdev-mirror``, ``sync=full``). Once the job is *ready* (the copy caught up
  and follows each write) ``job-complete`` switches the guest to the new image; the old one
  is closed (and its image lock released) and left for the caller to delete. ``query-block``
  then proves the backend reads the new file.
* **Shared-nothing migration**: the target creates empty images and exports them writable
  over NBD (``nbd-server-start`` + ``block-export-add``, export ``disk<i>``); the source opens
  each export as an ``nbd`` node and mirrors onto it (``copy-mode=write-blocking``: once ready,
  each guest write reaches the target before it completes). When all mirrors are ready the
  memory migrates as usual; once the source is paused, ``block-job-cancel`` (not forced) ends
  each ready mirror *without* switching the source to it, after the last in-flight data
  reached the target; the target then stops its NBD server before it runs the guest.

Jobs are created with ``auto-dismiss=false`` so a failed job stays to be read (its error)
and is dismissed by us. Any failure stops the jobs and removes what was created; the guest
keeps its old disks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from hvcluster.drivers.base import Confirm, DiskMoveResult, MigrationResult, ProgressCallback
from hvcluster.drivers.errors import (
    DiskMoveFailed,
    MigrationCancelled,
    QemuFailed,
    SpecError,
)
from hvcluster.drivers.qemu.monitor import Monitor
from hvcluster.drivers.qemu.vm import QemuVM, free_port, uri_host
from hvcluster.drivers.runtime import read_json, write_json
from hvcluster.host import qemuimg
from hvcluster.models.errors import DriverError
from hvcluster.models.migration import Progress
from hvcluster.models.vm import Disk

log = logging.getLogger(__name__)

POLL_S = 0.05
NBD_PREFIX = "nbd:"


def device(index: int) -> str:
    """The block backend of disk ``index`` (``-drive id=disk<i>``) and its NBD export name."""
    return f"disk{index}"


# --- images -----------------------------------------------------------------------------
async def create_image(path: Path, fmt: str, size: int) -> None:
    """A new empty image (qcow2 and raw are both thin); refused if ``path`` exists."""
    if await asyncio.to_thread(path.exists):
        raise SpecError(f"{path} exists already; a disk is never moved onto a file", "path")
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    try:
        await qemuimg.create(path, fmt, size, QemuFailed)
    except QemuFailed:
        remove(path)
        raise


def remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


async def drives(monitor: Monitor) -> dict[str, dict[str, Any]]:
    """Block backend name -> what is inserted (``file``, ``node-name``, ``image``...)."""
    found = await monitor.execute("query-block")
    return {str(b["device"]): b["inserted"] for b in found if b.get("inserted")}


async def inserted(monitor: Monitor, index: int) -> dict[str, Any]:
    found = (await drives(monitor)).get(device(index))
    if found is None:
        raise SpecError(f"vm {monitor.name} has no disk {index}", f"disks[{index}]")
    return found


async def disk_sizes(monitor: Monitor, count: int) -> list[int]:
    found = await drives(monitor)
    sizes = []
    for i in range(count):
        drive = found.get(device(i))
        if drive is None:
            raise SpecError(f"vm {monitor.name} has no disk {i}", f"disks[{i}]")
        sizes.append(int(drive["image"]["virtual-size"]))
    return sizes


# --- jobs -------------------------------------------------------------------------------
async def job(monitor: Monitor, job_id: str) -> dict[str, Any] | None:
    for j in await monitor.execute("query-jobs"):
        if j.get("id") == job_id:
            return dict(j)
    return None


def progress_of(jobs: Sequence[dict[str, Any]]) -> Progress:
    done = sum(int(j.get("current-progress", 0)) for j in jobs)
    total = sum(int(j.get("total-progress", 0)) for j in jobs)
    return Progress(bytes_transferred=done, bytes_total=total, bytes_remaining=max(total - done, 0))


async def wait_jobs(
    monitor: Monitor,
    ids: Sequence[str],
    until: str,
    deadline: float,
    on_progress: ProgressCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> None:
    """Wait until every job in ``ids`` is in state ``until`` (``ready``, ``concluded``). A
    job that concluded with an error, or vanished, raises :class:`QemuFailed` with QEMU's
    words; so does the deadline."""
    while True:
        found = [await job(monitor, i) for i in ids]
        for job_id, j in zip(ids, found, strict=True):
            if j is None:
                raise QemuFailed(f"block job {job_id} vanished")
            if j["status"] == "concluded" and j.get("error"):
                raise QemuFailed(f"block job {job_id} failed: {j['error']}")
            if j["status"] == "concluded" and until != "concluded":
                raise QemuFailed(f"block job {job_id} ended before it was {until}")
        if on_progress is not None:
            on_progress(progress_of([j for j in found if j is not None]))
        if all(j is not None and j["status"] == until for j in found):
            return
        if time.monotonic() > deadline:
            raise QemuFailed(f"block jobs {', '.join(ids)} not {until} in time")
        if cancelled is not None and cancelled():
            raise MigrationCancelled(f"vm {monitor.name}: the disk copy was cancelled")
        await asyncio.sleep(POLL_S)


async def end_job(monitor: Monitor, job_id: str, command: str, deadline: float) -> None:
    """``job-complete`` or a soft ``block-job-cancel`` of a ready mirror, then wait for it to
    conclude without error and dismiss it."""
    if command == "job-complete":
        await monitor.execute("job-complete", {"id": job_id})
    else:
        await monitor.execute("block-job-cancel", {"device": job_id, "force": False})
    await wait_jobs(monitor, [job_id], "concluded", deadline)
    await monitor.execute("job-dismiss", {"id": job_id})


async def abort_jobs(monitor: Monitor, ids: Sequence[str]) -> None:
    """Stop jobs whatever their state (best effort); the source disks stay as they were."""
    for job_id in ids:
        with contextlib.suppress(DriverError):
            if (j := await job(monitor, job_id)) is not None and j["status"] != "concluded":
                await monitor.execute("job-cancel", {"id": job_id})
    deadline = time.monotonic() + 10.0
    for job_id in ids:
        with contextlib.suppress(DriverError):
            while (j := await job(monitor, job_id)) is not None and j["status"] != "concluded":
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(POLL_S)
            if j is not None:
                await monitor.execute("job-dismiss", {"id": job_id})


async def drop_nodes(monitor: Monitor, nodes: Sequence[str]) -> None:
    for node in nodes:
        with contextlib.suppress(DriverError):
            await monitor.execute("blockdev-del", {"node-name": node})


async def finish_move(monitor: Monitor, index: int, dest_path: Path) -> str | None:
    """Complete a ready mirror of disk ``index`` onto ``dest_path`` left by a mover that went
    away after its confirm; the file read until then, or None if there is none to finish."""
    nodes = await monitor.execute("query-named-block-nodes", {"flat": True})
    onto = {
        n["node-name"]
        for n in nodes
        if n["node-name"].startswith(f"hvc-move{index}-") and n.get("file") == str(dest_path)
    }
    jobs = [
        j
        for j in await monitor.execute("query-jobs")
        if str(j.get("id", "")).startswith(f"hvc-mirror{index}-") and j.get("status") == "ready"
    ]
    if not onto or not jobs:
        return None
    old = await _reads(monitor, index)
    await end_job(monitor, str(jobs[0]["id"]), "job-complete", time.monotonic() + 60)
    if await _reads(monitor, index) != str(dest_path):
        raise DiskMoveFailed(f"vm {monitor.name} disk {index}: not switched to {dest_path}")
    return old


async def drop_stale(monitor: Monitor, index: int) -> None:
    """Stop a mirror of disk ``index`` left by an earlier move whose agent went away, and
    close its target node (its file, not named by the spec, is the caller's to delete)."""
    stale = [
        str(j["id"])
        for j in await monitor.execute("query-jobs")
        if str(j.get("id", "")).startswith(f"hvc-mirror{index}-")
    ]
    if stale:
        await abort_jobs(monitor, stale)
    nodes = await monitor.execute("query-named-block-nodes", {"flat": True})
    prefix = f"hvc-move{index}-"
    await drop_nodes(monitor, [n["node-name"] for n in nodes if n["node-name"].startswith(prefix)])


async def drop_copies(monitor: Monitor) -> None:
    """Stop every shared-nothing mirror of this VM (``hvc-copy*``) and close its NBD nodes
    (``hvc-nbd*``): left running by a source agent that went away mid-migration."""
    jobs = [
        str(j["id"])
        for j in await monitor.execute("query-jobs")
        if str(j.get("id", "")).startswith("hvc-copy")
    ]
    if jobs:
        await abort_jobs(monitor, jobs)
    nodes = await monitor.execute("query-named-block-nodes", {"flat": True})
    await drop_nodes(
        monitor, [n["node-name"] for n in nodes if n["node-name"].startswith("hvc-nbd")]
    )


def _id(kind: str, index: int) -> str:
    return f"hvc-{kind}{index}-{uuid.uuid4().hex[:8]}"


# --- moving a disk on this host -----------------------------------------------------------
async def move_disk(
    monitor: Monitor,
    index: int,
    dest_path: Path,
    fmt: str,
    on_progress: ProgressCallback | None,
    timeout_s: float,
    confirm: Confirm | None = None,
) -> DiskMoveResult:
    """Mirror disk ``index`` onto a new image at ``dest_path`` and switch the guest to it
    (after ``confirm()``, when given, says yes). Write-blocking once ready: from ``confirm``
    on, the new image holds every write the guest saw complete."""
    began = time.monotonic()
    what = f"vm {monitor.name} disk {index}"
    try:
        await drop_stale(monitor, index)
        drive = await inserted(monitor, index)
        old = str(drive["file"])
        if old == str(dest_path):
            raise SpecError(f"{dest_path} is the disk's own file", f"disks[{index}].path")
        if drive.get("ro"):
            raise SpecError("a read-only disk is not moved; copy it instead", f"disks[{index}]")
        size = int(drive["image"]["virtual-size"])
        await create_image(dest_path, fmt, size)
    except DriverError as e:
        raise DiskMoveFailed(f"{what}: cannot move to {dest_path}: {e}") from e
    node, job_id = _id("move", index), _id("mirror", index)
    deadline = began + timeout_s
    try:
        target = {"driver": "file", "filename": str(dest_path)}
        await monitor.execute("blockdev-add", {"driver": fmt, "node-name": node, "file": target})
        await monitor.execute(
            "blockdev-mirror",
            {
                "job-id": job_id,
                "device": device(index),
                "target": node,
                "sync": "full",
                "copy-mode": "write-blocking",
                "auto-dismiss": False,
            },
        )
        await wait_jobs(monitor, [job_id], "ready", deadline, on_progress)
        if confirm is not None and not await confirm():
            raise QemuFailed("the move was not confirmed")
        # Confirmed: the caller recorded the new file. The switch must happen even if our
        # task is cancelled now, so it runs on its own.
        switch = asyncio.create_task(end_job(monitor, job_id, "job-complete", deadline))
        try:
            await asyncio.shield(switch)
        except asyncio.CancelledError:
            await asyncio.wait([switch])
            raise
        now = str((await inserted(monitor, index))["file"])
        if now != str(dest_path):
            raise QemuFailed(f"after the switch the disk still reads {now}")
    except BaseException as e:  # a cancelled task too: never leave a mirror running
        await abort_jobs(monitor, [job_id])
        if (await _reads(monitor, index)) != str(dest_path):
            await drop_nodes(monitor, [node])
            remove(dest_path)
        if isinstance(e, DriverError):
            raise DiskMoveFailed(f"{what}: moving it to {dest_path} failed: {e}") from e
        raise
    if on_progress is not None:
        on_progress(Progress(bytes_transferred=size, bytes_total=size))
    return DiskMoveResult(
        name=monitor.name,
        index=index,
        old_path=old,
        new_path=str(dest_path),
        bytes_total=size,
        total_ms=(time.monotonic() - began) * 1000,
    )


async def _reads(monitor: Monitor, index: int) -> str:
    """The file disk ``index`` reads now ("" if unknown)."""
    try:
        return str((await inserted(monitor, index))["file"])
    except DriverError:
        return ""


def respec(vm: QemuVM, index: int, dest: Disk) -> None:
    """Disk ``index`` of ``vm`` is ``dest`` now: in memory and in its runtime record (so a
    new driver that re-attaches knows it)."""
    disks = list(vm.spec.disks)
    disks[index] = dest
    vm.spec = vm.spec.model_copy(update={"disks": tuple(disks)})
    record = read_json(vm.dir / "spec.json")
    if record is not None:
        record["spec"] = vm.spec.model_dump(mode="json")
        with contextlib.suppress(OSError):
            write_json(vm.dir / "spec.json", record)


# --- shared-nothing migration: the target -----------------------------------------------
async def export_disks(monitor: Monitor, count: int, host: str) -> str:
    """Serve disks 0..count-1 writable over NBD on a free port of ``host``; the address."""
    last: Exception | None = None
    address = ""
    for _ in range(5):
        port = free_port(host)
        addr = {"type": "inet", "data": {"host": host, "port": str(port)}}
        try:
            await monitor.execute("nbd-server-start", {"addr": addr})
            address = f"{NBD_PREFIX}{uri_host(host)}:{port}"
            break
        except QemuFailed as e:
            last = e
    if not address:
        raise QemuFailed(f"vm {monitor.name}: no free NBD port on {host}: {last}")
    found = await drives(monitor)
    for i in range(count):
        drive = found.get(device(i))
        if drive is None:
            raise SpecError(f"vm {monitor.name} has no disk {i}", f"disks[{i}]")
        await monitor.execute(
            "block-export-add",
            {
                "type": "nbd",
                "id": f"hvc-export{i}",
                "node-name": drive["node-name"],
                "name": device(i),
                "writable": True,
            },
        )
    return address


async def close_exports(monitor: Monitor) -> None:
    """Stop serving the disks (the source's copy is complete): before the guest runs here."""
    await monitor.execute("nbd-server-stop")


def nbd_server(address: str) -> tuple[str, str]:
    """``nbd:HOST:PORT`` (``[v6]`` hosts bracketed) as (host, port)."""
    if not address.startswith(NBD_PREFIX):
        raise SpecError(f"{address!r} is not an nbd: address", "disks_address")
    host, _, port = address.removeprefix(NBD_PREFIX).rpartition(":")
    if not host or not port.isdigit():
        raise SpecError(f"{address!r} is not nbd:HOST:PORT", "disks_address")
    return host.strip("[]"), port


# --- shared-nothing migration: the source -----------------------------------------------
class Mirrors:
    """This VM's disks mirrored to another host's NBD exports, from ready to finished."""

    def __init__(self, monitor: Monitor, count: int, address: str) -> None:
        self.monitor, self.count, self.address = monitor, count, address
        self.nodes: list[str] = []
        self.jobs: list[str] = []

    async def start(
        self,
        timeout_s: float,
        on_progress: ProgressCallback | None,
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        """Open each export, mirror onto it, and wait until every mirror is ready."""
        host, port = nbd_server(self.address)
        try:
            for i in range(self.count):
                node, job_id = _id("nbd", i), _id("copy", i)
                server = {"type": "inet", "host": host, "port": port}
                await self.monitor.execute(
                    "blockdev-add",
                    {"driver": "nbd", "node-name": node, "server": server, "export": device(i)},
                )
                self.nodes.append(node)
                await self.monitor.execute(
                    "blockdev-mirror",
                    {
                        "job-id": job_id,
                        "device": device(i),
                        "target": node,
                        "sync": "full",
                        "copy-mode": "write-blocking",
                        "auto-dismiss": False,
                    },
                )
                self.jobs.append(job_id)
            deadline = time.monotonic() + timeout_s
            await wait_jobs(self.monitor, self.jobs, "ready", deadline, on_progress, cancelled)
        except DriverError as e:
            await self.abort()
            raise DiskMoveFailed(
                f"vm {self.monitor.name}: copying its disks to {self.address} failed: {e}"
            ) from e

    async def finish(self, timeout_s: float = 60.0) -> None:
        """The source is paused: end each mirror once the target holds every write."""
        deadline = time.monotonic() + timeout_s
        try:
            for job_id in self.jobs:
                await end_job(self.monitor, job_id, "block-job-cancel", deadline)
        except DriverError as e:
            await self.abort()
            raise DiskMoveFailed(
                f"vm {self.monitor.name}: finishing the disk copies to {self.address}: {e}"
            ) from e
        await drop_nodes(self.monitor, self.nodes)
        self.jobs, self.nodes = [], []

    async def abort(self) -> None:
        await abort_jobs(self.monitor, self.jobs)
        await drop_nodes(self.monitor, self.nodes)
        self.jobs, self.nodes = [], []


async def with_mirrors(
    monitor: Monitor,
    count: int,
    disks_address: str,
    timeout_s: float,
    on_progress: ProgressCallback | None,
    migrate: Callable[[], Awaitable[MigrationResult]],
    cancelled: Callable[[], bool] | None = None,
) -> MigrationResult:
    """Mirror the disks to ``disks_address``, run ``migrate()`` (the memory) once they are
    ready, then finish the mirrors. A failure before the memory moved stops the mirrors and
    is raised (the VM runs on here). Once it moved, the guest belongs to the target: the
    write-blocking mirrors put every completed write there before QEMU stopped the guest,
    so a mirror that cannot be finished cleanly (the target stopped serving first) is only
    stopped and logged, never a reason to run the source again."""
    mirrors = Mirrors(monitor, count, disks_address)
    await mirrors.start(timeout_s, on_progress, cancelled)
    try:
        result = await migrate()
    except BaseException:
        await mirrors.abort()
        raise
    try:
        await mirrors.finish()
    except DiskMoveFailed as e:
        log.warning("%s (the memory moved; the target's copies were complete)", e)
    return result
