"""Host-side helpers for the test guest (see :mod:`hvcluster.guestimage.image`): its disk, the
counter it keeps there, its serial console, and a VM spec that boots it.

The counter is how tests prove a VM was never reset, never ran twice and lost nothing. It is
read with ``qemu-img dd -U`` (force-share), so it works while QEMU holds the image lock.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from hvcluster.guestimage.image import GuestImage
from hvcluster.host.qemuimg import qemu_img_blocking
from hvcluster.models.vm import Disk, Nic, VMSpec

COUNTER = re.compile(rb"^HVCCOUNTER1 (\d{20})\n")
HEARTBEAT = re.compile(r"HVC-HEARTBEAT counter=(\d+)")
BOOT_MARKER = "HVC-BOOT"
DIRTY_LAP = re.compile(r"HVC-DIRTY-LAP \d+")


def create_disk(path: Path, size_mib: int = 16, fmt: str = "qcow2") -> Path:
    """A new, empty disk image (its counter reads 0)."""
    qemu_img_blocking("create", "-q", "-f", fmt, str(path), f"{size_mib}M")
    return Path(path)


def read_counter(path: Path, fmt: str = "qcow2") -> int:
    """The counter the guest last wrote to the disk; 0 if it never wrote one. The busybox
    guest keeps it in sector 0; the Debian guest, whose sector 0 is its MBR, in sector 1."""
    if fmt == "raw":
        with open(path, "rb") as f:
            head = f.read(1024)
    else:
        with tempfile.TemporaryDirectory(prefix="hvc-counter-") as tmp:
            out = Path(tmp) / "sector"
            qemu_img_blocking(
                "dd", "-U", "-f", fmt, "-O", "raw", "bs=512", "count=2", f"if={path}", f"of={out}"
            )
            head = out.read_bytes()[:1024]
    m = COUNTER.match(head[:64]) or COUNTER.match(head[512:576])
    return int(m.group(1)) if m else 0


def heartbeats(serial_log: Path) -> list[int]:
    """The counter values of every heartbeat the guest printed so far."""
    try:
        text = Path(serial_log).read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [int(n) for n in HEARTBEAT.findall(text)]


def booted(serial_log: Path) -> bool:
    try:
        return BOOT_MARKER in Path(serial_log).read_text(errors="replace")
    except FileNotFoundError:
        return False


def guest_spec(
    name: str,
    image: GuestImage,
    disk: Path | None = None,
    memory_mib: int = 128,
    nics: tuple[Nic, ...] = (),
    fmt: str = "qcow2",
    dirty_mib_s: int = 0,
    dirty_set_mib: int = 0,
) -> VMSpec:
    """A VM spec that boots the test guest, with its counter on ``disk`` if given; with
    ``dirty_mib_s``, its memory writer dirties that many MiB a second over ``dirty_set_mib``
    (the guest's default if 0)."""
    disks = (Disk(path=str(Path(disk).absolute()), format=fmt),) if disk is not None else ()
    boot = image.boot(dirty_cmdline(dirty_mib_s, dirty_set_mib))
    return VMSpec(name=name, memory_mib=memory_mib, disks=disks, nics=nics, boot=boot)


def dirty_cmdline(dirty_mib_s: int, dirty_set_mib: int = 0) -> str:
    """The kernel command line words that start the test guest's memory writer."""
    words = [f"hvc.dirty_mib_s={dirty_mib_s}"] if dirty_mib_s > 0 else []
    if dirty_mib_s > 0 and dirty_set_mib > 0:
        words.append(f"hvc.dirty_set_mib={dirty_set_mib}")
    return " ".join(words)


def dirty_laps(serial_log: Path) -> int:
    """How many times the memory writer went over its whole set (-1: it has not started)."""
    try:
        text = Path(serial_log).read_text(errors="replace")
    except FileNotFoundError:
        return -1
    if "HVC-DIRTY rate=" not in text:
        return -1
    return len(DIRTY_LAP.findall(text))
