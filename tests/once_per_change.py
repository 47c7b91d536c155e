"""Tests marked ``once_per_change`` run once per change of what they exercise (issue 15).

The Debian-guest tests (``tests/lab/test_debian_guest.py``, ``tests/drivers/test_qemu_debian.py``)
boot systemd under TCG again and again: five minutes of the suite. Issue 15 lets them be
marked slow as long as CI runs them at least once per change to the drivers or the agent.
So when such a test passes (its call and its teardown), a stamp is written to
``<cache>/test-stamps/`` named by a content hash of what it exercises (:func:`change_hash`):
the source trees of :data:`TREES` (the drivers, the agent, the guest images, whose Debian
recipe is part of ``guestimage/debian*.py``), the test's own file, this file, the recipe id
and the QEMU version. Before it runs, a stamp of the current hash skips it, naming the hash
and when it passed. Any byte changed in those trees (a fresh clone has the same bytes, so the
same hash) runs it again; a failed run writes nothing, so it runs again next time too.
``HVC_TEST_ALL=1`` runs it whatever the stamps say (and still records a pass).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

from hvcluster.guestimage.debian import recipe_id
from hvcluster.guestimage.image import DEFAULT_CACHE

ROOT = Path(__file__).resolve().parents[1]
TREES = ("src/hvcluster/drivers", "src/hvcluster/agent", "src/hvcluster/guestimage")
FORCE_ENV = "HVC_TEST_ALL"
MARKER = "once_per_change"


def stamps_dir() -> Path:
    return Path(os.environ.get("HVC_CACHE", str(DEFAULT_CACHE))) / "test-stamps"


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def qemu_version() -> str:
    """The QEMU the guests boot on (an upgrade is a change of what the tests exercise)."""
    try:
        out = subprocess.run(
            ["qemu-system-x86_64", "--version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown: {e}"
    return out.stdout.splitlines()[0] if out.stdout else f"unknown: exit {out.returncode}"


def change_hash(test_file: Path, root: Path = ROOT) -> str:
    """Hash of every byte of :data:`TREES`, ``test_file``, this file, the Debian recipe id
    and the QEMU version, with the paths (a file moved or renamed changes it too)."""
    digest = hashlib.sha256()
    paths = [root / t for t in TREES] + [Path(test_file).resolve(), Path(__file__).resolve()]
    root = root.resolve()
    for top in paths:
        for f in _files(top):
            name = str(f.relative_to(root)) if f.is_relative_to(root) else f.name
            digest.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
    digest.update(f"recipe {recipe_id()}\0{qemu_version()}".encode())
    return digest.hexdigest()[:16]


def stamp_path(nodeid: str, key: str) -> Path:
    name = hashlib.sha256(nodeid.encode()).hexdigest()[:12]
    return stamps_dir() / f"{name}-{key}.json"


def passed_before(nodeid: str, key: str) -> str | None:
    """Why ``nodeid`` need not run on the code of hash ``key``, or None when it must run
    (no stamp of that hash, or :data:`FORCE_ENV` set)."""
    if os.environ.get(FORCE_ENV) == "1":
        return None
    try:
        stamp = json.loads(stamp_path(nodeid, key).read_text())
    except (OSError, ValueError):
        return None
    return (
        f"passed {stamp.get('passed_at')} on this code (hash {key} of "
        f"{', '.join(TREES)}, the test file, the recipe, QEMU); {FORCE_ENV}=1 runs it again"
    )


def record_pass(nodeid: str, key: str) -> None:
    """Write the stamp of a pass (none if the cache cannot be written: it runs again)."""
    stamp = {
        "test": nodeid,
        "hash": key,
        "passed_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    path = stamp_path(nodeid, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stamp, indent=1) + "\n")
    except OSError as e:
        print(f"once_per_change: no stamp written for {nodeid}: {e}")
