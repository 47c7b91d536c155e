"""Each lab node sees the lab dir as a separate host would: a private mount namespace in which
the lab dir is an empty read-only tmpfs, with only the node's own paths bound back at their
usual places (its run dir, its certificate files, the shared volume). Another node's run dir,
the etcd members' data, the lab's CA key and ``lab.json`` are not there, so nothing in an agent
(or in the QEMU processes and watchdog it runs with) can work only because it happens to read a
file another node wrote: one shared ``/run`` once hid exactly that (a quick migration's saved
state written to the source's run dir and read by the target).

The kept paths are bound at the same absolute paths, so command lines, pid files and sockets
read the same from this host's namespace: ``hvc lab down``, the faults and the host-view
checker (lab/hostview.py) keep reading ``<lab dir>/nodes/<node>`` as the operator of every
host. Nothing is mounted in this host's namespace: a node's namespace goes with its last
process, so there is nothing to unmount.

Run as ``python -m hvcluster.lab.hostns --hide DIR --keep PATH... -- ARGV``: it makes the
namespace then execs ``ARGV`` (the pid stays the command's own, as with nsenter). Needs root
(CAP_SYS_ADMIN); Linux only. Standard library only, so it starts fast.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from collections.abc import Sequence

CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18


class HostNsError(OSError):
    """The node's mount namespace could not be made."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise HostNsError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    libc = _libc()
    result = libc.mount(
        src.encode() if src else None,
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    _check(result, f"mount {src or fstype or ''} on {target}")


def isolate(hide: str, keep: Sequence[str]) -> None:
    """Make this process's mount namespace private, cover ``hide`` with an empty read-only
    tmpfs and bind each path of ``keep`` (under ``hide``) back at its own place."""
    hide = os.path.realpath(hide)
    reals = [os.path.realpath(path) for path in keep]
    for path, real in zip(keep, reals, strict=True):
        if os.path.commonpath([hide, real]) != hide or real == hide:
            raise HostNsError(0, f"--keep {path} is not inside --hide {hide}")
    _check(_libc().unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks to this host
    # Opened (in the new namespace: a bind's source must be a mount of it) before the tmpfs
    # hides them; bound from /proc/self/fd (the kernel follows that link to the file
    # itself, wherever it is hidden).
    kept = [(real, os.open(real, os.O_PATH)) for real in reals]
    _mount("hvc-lab-node", hide, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    for real, fd in sorted(kept):
        parent = os.path.dirname(real)
        os.makedirs(parent, exist_ok=True)
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(real, exist_ok=True)
        else:
            with open(real, "a"):
                pass
        _mount(f"/proc/self/fd/{fd}", real, None, MS_BIND | MS_REC)
        os.close(fd)
    # Read-only: a node cannot create files beside its kept paths in the hidden lab dir.
    _mount(None, hide, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "mode=0755")


def wrap(hide: str, keep: Sequence[str], argv: Sequence[str]) -> list[str]:
    """``argv`` run in a node's own mount namespace (see the module's docstring)."""
    args = [sys.executable, "-m", "hvcluster.lab.hostns", "--hide", hide]
    for path in keep:
        args += ["--keep", path]
    return [*args, "--", *argv]


def join(pid: int, argv: Sequence[str]) -> list[str]:
    """``argv`` run in the mount namespace of ``pid`` (the node's watchdog, which made it):
    a node's agent and watchdog are one host's. nsenter execs it (a C program: an agent
    restarted after a crash is back as fast as without a namespace, well within
    ``fence_after``); entering a mount namespace starts in its ``/``, so ``--wd`` keeps
    the working directory."""
    return ["nsenter", f"--mount=/proc/{pid}/ns/mnt", f"--wd={os.getcwd()}", "--", *argv]


def ready(pid: int, hide: str) -> bool:
    """True once ``pid``'s namespace is made: ``hide`` is the read-only tmpfs (made last)."""
    target = os.path.realpath(hide)
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if len(fields) > 5 and fields[4] == target and "ro" in fields[5].split(","):
            return True
    return False


def main(args: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hvcluster.lab.hostns", description=__doc__)
    parser.add_argument("--hide", required=True)
    parser.add_argument("--keep", action="append", default=[])
    parser.add_argument("argv", nargs="+")
    ns = parser.parse_args(args)
    try:
        isolate(ns.hide, ns.keep)
    except OSError as e:
        sys.exit(f"hvcluster.lab.hostns: {e}")
    os.execvp(ns.argv[0], ns.argv)


if __name__ == "__main__":
    main()
