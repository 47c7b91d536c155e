"""Where a VM's disk is on this host: one rule for every driver.

A disk on a volume is ``<mount>/<path>`` as the host's file system resolves it (symlinks
followed), refused if that leaves the volume's mount: the model keeps ``..`` out of the
name, this keeps a symlink from leading out. An absolute disk is used as named; the agent
checked it lies under a directory the cluster config allows before it asked for a start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from hvcluster.drivers.errors import SpecError
from hvcluster.models.vm import Disk, VMSpec


def disk_path(disk: Disk, index: int, volumes: Mapping[str, Path]) -> Path:
    if disk.volume is None:
        return Path(disk.path)
    root = volumes.get(disk.volume)
    if root is None:
        raise SpecError(
            f"volume {disk.volume!r} is not mounted on this host", f"disks[{index}].volume"
        )
    mount = Path(root).resolve()
    full = (mount / disk.path).resolve()
    if full == mount or not full.is_relative_to(mount):
        raise SpecError(
            f"disk {disk.file} leads out of its volume (to {full})", f"disks[{index}].path"
        )
    return full


def incoming_paths(spec: VMSpec, sizes: Sequence[int], volumes: Mapping[str, Path]) -> list[Path]:
    """Where a shared-nothing migration's target creates the disks of ``spec``: one file
    per disk, of which the source gave one size each (refused otherwise)."""
    paths = [disk_path(d, i, volumes) for i, d in enumerate(spec.disks)]
    if len(sizes) != len(paths):
        raise SpecError(f"{len(sizes)} sizes for {len(paths)} disks", "disks")
    return paths
