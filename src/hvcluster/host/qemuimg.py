"""``qemu-img``, the one way this code base creates, grows, sizes and reads disk images.

The agent (disks it creates on volumes), the qemu driver (the new files of a storage
migration) and the test guest's tools all call it through here: bounded in time, its
failures raised as the caller's error with what ``qemu-img`` said.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from hvcluster.host.run import run_command
from hvcluster.models.errors import DriverError

TIMEOUT_S = 60.0


class QemuImgFailed(DriverError):
    """``qemu-img`` could not run, took too long, or refused."""


async def qemu_img(
    *args: str, error: type[Exception] = QemuImgFailed, timeout_s: float = TIMEOUT_S
) -> str:
    """Run ``qemu-img ARGS``; its stdout. Anything wrong raises ``error``."""
    return await run_command(["qemu-img", *args], timeout_s, error)


def qemu_img_blocking(*args: str, timeout_s: float = TIMEOUT_S) -> str:
    """:func:`qemu_img` for callers outside an event loop (the test guest's tools)."""
    command = ["qemu-img", *args]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except OSError as e:
        raise QemuImgFailed(f"cannot run qemu-img (package qemu-utils): {e}") from None
    except subprocess.TimeoutExpired:
        raise QemuImgFailed(f"{' '.join(command)} did not finish in {timeout_s:.0f}s") from None
    if done.returncode != 0:
        raise QemuImgFailed(f"{' '.join(command)}: {done.stderr.strip()}")
    return done.stdout


async def create(path: Path, fmt: str, size: int, error: type[Exception] = QemuImgFailed) -> None:
    """A new empty (thin) image of ``size`` bytes at ``path``."""
    await qemu_img("create", "-q", "-f", fmt, str(path), str(size), error=error)


async def resize(path: Path, fmt: str, size: int, error: type[Exception] = QemuImgFailed) -> None:
    await qemu_img("resize", "-q", "-f", fmt, str(path), str(size), error=error)


async def virtual_size(path: Path, fmt: str, error: type[Exception] = QemuImgFailed) -> int:
    """The size the guest sees, in bytes."""
    info = json.loads(await qemu_img("info", "-f", fmt, "--output=json", str(path), error=error))
    return int(info["virtual-size"])
