"""Shared volumes as this host sees them.

A volume is a path every node mounts. A node *sees* a volume when the path is a directory
whose marker file ``<path>/.hvc-volume`` holds the volume's id: the same id on every node
proves they all mount the same storage (and not, say, an empty local directory where an
NFS mount failed). An admin places the marker (``hvc volume mark PATH``); no agent ever
writes it, and a path that is (or leads by a symlink to) ``/`` or a system directory is
never a volume here, whatever the store says.

Checks are plain blocking file-system calls; callers run them in a thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hvcluster.models.storage import MARKER, MARKER_ID, Volume, system_dir_problem

MIB = 1024 * 1024


@dataclass(frozen=True)
class VolumeCheck:
    name: str
    seen: bool
    free_mib: int | None = None
    problem: str | None = None  # why it is not seen


def marker_path(volume: Volume) -> Path:
    return Path(volume.path) / MARKER


def check_volume(volume: Volume) -> VolumeCheck:
    """Does this host see ``volume``? Never raises: a problem is the answer."""
    root = Path(volume.path)
    try:
        if not root.is_dir():
            return VolumeCheck(volume.name, False, problem=f"{root} is not a directory here")
        real = root.resolve()
        system = system_dir_problem(str(real))
        if system is not None:
            return VolumeCheck(volume.name, False, problem=f"{root} leads to {system}")
        marker = root / MARKER
        if not marker.is_file() or marker.is_symlink():
            return VolumeCheck(
                volume.name,
                False,
                problem=f"no marker {marker}: an admin places it ('hvc volume mark {root}')",
            )
        found = read_marker_id(marker)
        if found != volume.id:
            shown = repr(found) if MARKER_ID.match(found) else "no volume id"  # never a secret
            return VolumeCheck(
                volume.name,
                False,
                problem=f"{marker} holds {shown}, not {volume.id}: another "
                "volume is mounted there (if it is this one added again, add it with that id)",
            )
        st = os.statvfs(root)
        return VolumeCheck(volume.name, True, free_mib=st.f_bavail * st.f_frsize // MIB)
    except OSError as e:
        return VolumeCheck(volume.name, False, problem=f"{root}: {e.strerror or e}")


def read_marker_id(marker: Path) -> str:
    """The first line of a marker file, read without following a symlink (O_NOFOLLOW)."""
    fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        return os.read(fd, 256).decode(errors="replace").strip()
    finally:
        os.close(fd)


def resolve_disk(mount: Path, path: str) -> Path:
    """``<mount>/<path>`` as the host's file system resolves it, refused (ValueError) if it
    leaves the volume (a symlink, '..')."""
    root = Path(mount).resolve()
    full = (root / path).resolve()
    if full == root or not full.is_relative_to(root):
        raise ValueError(f"disk path {path!r} leaves volume {mount} (it leads to {full})")
    return full


def resolve_allowed(path: str, allowed: Iterable[str]) -> Path:
    """The absolute disk ``path`` as the host resolves it, refused (ValueError) unless it
    stays inside one of the ``allowed`` directories (the cluster config's
    ``allowed_disk_dirs``), symlinks followed."""
    full = Path(path).resolve()
    for directory in allowed:
        root = Path(directory).resolve()
        if full != root and full.is_relative_to(root):
            return full
    where = ", ".join(allowed) or "none: disks live on volumes"
    raise ValueError(
        f"{path} (leads to {full}) is outside the directories the cluster config "
        f"allows for disk and boot images (allowed_disk_dirs: {where})"
    )
