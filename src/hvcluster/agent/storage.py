"""Shared volumes as this host sees them.

A volume is a path every node mounts. A node *sees* a volume when the path is a directory
whose marker file ``<path>/.hvc-volume`` holds the volume's id: the same id on every node
proves they all mount the same storage (and not, say, an empty local directory where an
NFS mount failed). The marker is written once, by the one agent that wins a claim in the
store (``locks/volume-marker:<id>``, compare absent), atomically: the id goes to a temporary
file that is then hard-linked into place, which fails if a marker already exists (O_EXCL
semantics with the content complete). Every other node waits for the marker to appear.

Checks are plain blocking file-system calls; callers run them in a thread.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from hvcluster.models.storage import MARKER, Volume

MIB = 1024 * 1024


@dataclass(frozen=True)
class VolumeCheck:
    name: str
    seen: bool
    free_mib: int | None = None
    problem: str | None = None  # why it is not seen
    needs_marker: bool = False  # the path is there but nobody wrote the marker yet


def marker_path(volume: Volume) -> Path:
    return Path(volume.path) / MARKER


def check_volume(volume: Volume) -> VolumeCheck:
    """Does this host see ``volume``? Never raises: a problem is the answer."""
    root = Path(volume.path)
    try:
        if not root.is_dir():
            return VolumeCheck(volume.name, False, problem=f"{root} is not a directory here")
        marker = root / MARKER
        try:
            found = marker.read_text().strip()
        except FileNotFoundError:
            return VolumeCheck(
                volume.name, False, problem=f"no marker {marker} yet", needs_marker=True
            )
        if found != volume.id:
            return VolumeCheck(
                volume.name,
                False,
                problem=f"{marker} holds id {found[:40]!r}, not {volume.id}: another "
                "volume is mounted there (if it is this one added again, add it with that id)",
            )
        st = os.statvfs(root)
        return VolumeCheck(volume.name, True, free_mib=st.f_bavail * st.f_frsize // MIB)
    except OSError as e:
        return VolumeCheck(volume.name, False, problem=f"{root}: {e.strerror or e}")


def write_marker(volume: Volume, node: str) -> str | None:
    """Write the marker holding the volume's id, unless one exists. None when written (or
    when the same id was already there), else why not."""
    root = Path(volume.path)
    marker = root / MARKER
    tmp = root / f"{MARKER}.{node}.{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, f"{volume.id}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, marker)  # fails if a marker exists: nobody's is overwritten
        except FileExistsError:
            found = marker.read_text().strip()
            if found != volume.id:
                return f"{marker} already holds id {found[:40]!r}"
        return None
    except OSError as e:
        return f"cannot write {marker}: {e.strerror or e}"
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def resolve_disk(mount: Path, path: str) -> Path:
    """``<mount>/<path>``, refused (ValueError) if it leaves the volume (a symlink, '..')."""
    root = Path(mount).resolve()
    full = (root / path).resolve()
    if full == root or not full.is_relative_to(root):
        raise ValueError(f"disk path {path!r} leaves volume {mount}")
    return full
