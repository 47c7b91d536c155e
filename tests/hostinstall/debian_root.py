"""A fresh Debian 12 root for the host-install test: a minimal bookworm debootstrapped once
from this machine's Debian mirror into ``$HVC_CACHE/hostinstall/bookworm-base`` and never
changed after; each run mounts an overlay over it (a fresh root, nothing copied), with
proc, sys and dev, and the apt downloads and package lists kept in the cache so a second run
downloads nothing. Every mount is undone on the way out, failing or not."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

CACHE = Path(os.environ.get("HVC_CACHE", "/var/cache/hvcluster")) / "hostinstall"
BASE = CACHE / "bookworm-base"
COMPLETE = ".hvc-complete"  # written last: a half-made root (interrupted run) is redone
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def debian_mirror() -> str:
    """The Debian mirror apt uses here (sources.list or deb822 .sources), not security."""
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            texts.append(path.read_text())
    for url in re.findall(r"(?m)^(?:URIs:|deb)\s+(?:\[[^]]*\]\s+)?(\S+)", "\n".join(texts)):
        if "security" not in url:
            return url.rstrip("/")
    return DEFAULT_MIRROR


def base_root() -> Path:
    if (BASE / COMPLETE).exists():
        return BASE
    partial = CACHE / "bookworm-base.partial"
    shutil.rmtree(partial, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(partial), debian_mirror()],
        check=True,
        capture_output=True,
        timeout=900,
    )
    shutil.rmtree(BASE, ignore_errors=True)
    partial.rename(BASE)
    (BASE / COMPLETE).touch()
    return BASE


def _mount(argv: list[str], mounted: list[Path], target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", *argv, str(target)], check=True, capture_output=True, timeout=30)
    mounted.append(target)


@contextlib.contextmanager
def fresh_root(scratch: Path, binds: dict[str, Path]) -> Iterator[Path]:
    """A fresh bookworm root at ``scratch/root``; ``binds`` maps paths inside it to host
    directories mounted there read-only."""
    base = base_root()
    upper, work, root = scratch / "upper", scratch / "work", scratch / "root"
    for d in (upper, work, root):
        d.mkdir(parents=True, exist_ok=True)
    archives, lists = CACHE / "apt-archives", CACHE / "apt-lists"
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    mounted: list[Path] = []
    try:
        layers = f"lowerdir={base},upperdir={upper},workdir={work}"
        _mount(["-t", "overlay", "overlay", "-o", layers], mounted, root)
        _mount(["-t", "proc", "proc"], mounted, root / "proc")
        _mount(["-t", "sysfs", "sysfs"], mounted, root / "sys")
        _mount(["--bind", "/dev"], mounted, root / "dev")
        _mount(["--bind", str(archives)], mounted, root / "var/cache/apt/archives")
        _mount(["--bind", str(lists)], mounted, root / "var/lib/apt/lists")
        for inside, outside in binds.items():
            _mount(["--bind", "-o", "ro", str(outside)], mounted, root / inside.lstrip("/"))
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
        # No service starts during apt installs in a chroot (Debian's convention).
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        yield root
    finally:
        for target in reversed(mounted):
            done = subprocess.run(["umount", str(target)], capture_output=True, check=False)
            if done.returncode != 0:  # still busy (a process left inside): detach it
                subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
