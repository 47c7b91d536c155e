"""Checkpoints of QEMU VMs: qcow2 internal snapshots (see models/checkpoint.py).

* A VM running here: QMP's snapshot jobs (QEMU 6.0 on; 7.2 here). ``snapshot-save`` pauses
  the guest, writes its memory and device state into the first writable disk
  (``vmstate``) and snapshots every writable disk (``devices``: their block nodes, as
  ``query-block`` names them), then resumes it; ``snapshot-load`` does the reverse (the
  guest runs on from the saved moment); ``snapshot-delete`` removes the snapshot from every
  disk. QEMU refuses a snapshot during a migration or block job and on a disk format
  without internal snapshots (raw); we refuse a raw disk before asking, and a disk-only
  checkpoint on a running VM (QEMU: "revert to it offline").
* A VM not running here (stopped): ``qemu-img snapshot`` on each writable disk file; its
  image lock refuses a disk that a QEMU still has open (the VM running elsewhere).

A snapshot job concludes and stays until ``job-dismiss``: we poll ``query-jobs`` for its
conclusion, read its error, then dismiss it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

from hvcluster.drivers.diskpath import disk_path
from hvcluster.drivers.errors import CheckpointFailed, QemuFailed
from hvcluster.drivers.qemu.monitor import Monitor
from hvcluster.drivers.qemu.supervision import QemuSupervisor
from hvcluster.host.qemuimg import qemu_img
from hvcluster.models.checkpoint import Checkpoint, CheckpointAction, action_problem
from hvcluster.models.errors import DriverError
from hvcluster.models.lifecycle import VMState
from hvcluster.models.vm import VMSpec

POLL_S = 0.05
RESUME_WAIT_S = 2.0
JOB_TIMEOUT_S = 600.0  # the guest's whole memory is written (or read) within it
_JOBS = {
    CheckpointAction.CREATE: "snapshot-save",
    CheckpointAction.REVERT: "snapshot-load",
    CheckpointAction.DELETE: "snapshot-delete",
}


class QemuCheckpoints:
    """The qemu driver's :class:`~hvcluster.drivers.parts.Checkpointer`."""

    def __init__(self, vms: QemuSupervisor) -> None:
        self.vms = vms

    async def run(
        self, spec: VMSpec, action: CheckpointAction, name: str
    ) -> builtins.list[Checkpoint]:
        async with self.vms.lock(spec.name):
            vm = self.vms.running.get(spec.name)
            if vm is None:
                return await self._offline(spec, action, name)
            monitor = self.vms.qmp(vm)
            nodes = await _nodes(monitor, spec)
            found = await _listed(monitor, nodes[0])
            _refuse(action_problem(spec.name, action, name, found, running=True))
            args: dict[str, Any] = {"tag": name, "devices": nodes}
            if action is not CheckpointAction.DELETE:
                args["vmstate"] = nodes[0]
            # The guest pauses for the job: not a state to report. QEMU resumes it after (if
            # it ran); its RESUME event is awaited so that a late one is not taken for news.
            was_running, resumed = vm.state is VMState.RUNNING, asyncio.Event()
            vm.checkpointing = True
            try:
                with monitor.subscribe(lambda e, _: resumed.set() if e == "RESUME" else None):
                    await _job(monitor, _JOBS[action], args)
                    if was_running and action is not CheckpointAction.DELETE:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(resumed.wait(), RESUME_WAIT_S)
            finally:
                vm.checkpointing = False
                with contextlib.suppress(DriverError):
                    await self.vms.refresh(vm)
            return await _listed(monitor, nodes[0])

    async def list(self, spec: VMSpec) -> builtins.list[Checkpoint]:
        vm = self.vms.running.get(spec.name)
        if vm is not None:
            monitor = self.vms.qmp(vm)
            return await _listed(monitor, (await _nodes(monitor, spec))[0])
        return await _image_list(self._paths(spec)[0])

    def _paths(self, spec: VMSpec) -> builtins.list[Path]:
        volumes = self.vms.settings.volumes
        return [disk_path(d, i, volumes) for i, d in enumerate(spec.disks) if not d.readonly]

    async def _offline(
        self, spec: VMSpec, action: CheckpointAction, name: str
    ) -> builtins.list[Checkpoint]:
        paths = self._paths(spec)
        found = await _image_list(paths[0])
        _refuse(action_problem(spec.name, action, name, found, running=False))
        flag = {"create": "-c", "revert": "-a", "delete": "-d"}[action.value]
        for path in paths:
            args = ("snapshot", "-q", flag, name, str(path))
            await qemu_img(*args, error=CheckpointFailed)
        return await _image_list(paths[0])


def _refuse(problem: str | None) -> None:
    if problem is not None:
        raise CheckpointFailed(problem)


async def _nodes(monitor: Monitor, spec: VMSpec) -> builtins.list[str]:
    """The block node of each writable disk (``-drive id=disk<i>``), first disk first."""
    found = await monitor.execute("query-block")
    by_device = {str(b["device"]): b.get("inserted") or {} for b in found}
    nodes = []
    for i, disk in enumerate(spec.disks):
        if disk.readonly:
            continue
        node = by_device.get(f"disk{i}", {}).get("node-name")
        if not node:
            raise CheckpointFailed(f"vm {spec.name}: QEMU shows no disk {i} (disk{i})")
        nodes.append(str(node))
    return nodes


async def _listed(monitor: Monitor, node: str) -> builtins.list[Checkpoint]:
    for b in await monitor.execute("query-block"):
        inserted = b.get("inserted") or {}
        if inserted.get("node-name") == node:
            return _from_qemu(inserted.get("image", {}).get("snapshots", []))
    return []


async def _image_list(path: Path) -> builtins.list[Checkpoint]:
    out = await qemu_img("info", "-f", "qcow2", "--output=json", str(path), error=CheckpointFailed)
    return _from_qemu(json.loads(out).get("snapshots", []))


def _from_qemu(snapshots: builtins.list[dict[str, Any]]) -> builtins.list[Checkpoint]:
    """QEMU's snapshot list (``query-block`` and ``qemu-img info`` say it alike)."""
    out = []
    for s in snapshots:
        size = int(s.get("vm-state-size", 0))
        created = float(s.get("date-sec", 0)) + float(s.get("date-nsec", 0)) / 1e9
        out.append(Checkpoint(name=str(s["name"]), created=created, size=size, memory=size > 0))
    return out


async def _job(monitor: Monitor, command: str, args: dict[str, Any]) -> None:
    """Run snapshot job ``command`` to its end; its error is :class:`CheckpointFailed`."""
    job_id = f"hvc-{command}-{uuid.uuid4().hex[:8]}"
    try:
        await monitor.execute(command, {"job-id": job_id, **args})
    except QemuFailed as e:
        raise CheckpointFailed(str(e)) from None
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        try:
            jobs = await monitor.execute("query-jobs")
        except QemuFailed as e:
            raise CheckpointFailed(str(e)) from None
        job = next((j for j in jobs if j.get("id") == job_id), None)
        if job is None:
            raise CheckpointFailed(f"vm {monitor.name}: {command} job {job_id} vanished")
        if job.get("status") == "concluded":
            with contextlib.suppress(QemuFailed):
                await monitor.execute("job-dismiss", {"id": job_id})
            if job.get("error"):
                raise CheckpointFailed(f"vm {monitor.name}: {command}: {job['error']}")
            return
        if time.monotonic() > deadline:
            raise CheckpointFailed(f"vm {monitor.name}: {command} not done in {JOB_TIMEOUT_S}s")
        await asyncio.sleep(POLL_S)
