"""Is KVM usable here? Only a guest that actually boots under it says so.

``/dev/kvm`` may exist and still hang every guest (a nested variant): the probe boots the test
guest with ``-accel kvm`` and waits for its boot marker on the serial console. The verdict is
cached per host (hostname, kernel, QEMU version) in the cache dir, so the probe costs its
timeout once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

from hvcluster.drivers.qemu.host import qemu_version
from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.guestimage.image import cached_image

log = logging.getLogger(__name__)

BOOT_MARKER = b"HVC-BOOT"
VERDICT_FILE = "accel-probe.json"


def probe_key(settings: QemuSettings) -> str:
    uname = platform.uname()
    return f"{uname.node}|{uname.release}|{qemu_version(settings.binary)}"


def cached_verdict(settings: QemuSettings) -> str | None:
    try:
        data = json.loads((Path(settings.cache_dir) / VERDICT_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != probe_key(settings):
        return None
    verdict = data.get("accelerator")
    return verdict if verdict in ("kvm", "tcg") else None


async def decide_accelerator(settings: QemuSettings) -> tuple[str, str]:
    """``(accelerator, why)``: the setting if it forces one, else the (cached) probe verdict."""
    if settings.accelerator != "auto":
        return settings.accelerator, "forced by the accelerator setting"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm is absent or not accessible"
    verdict = cached_verdict(settings)
    if verdict is not None:
        return verdict, "cached probe verdict"
    image = cached_image(settings.cache_dir)
    if image is None:
        return "tcg", "no test guest image to probe KVM with (run `hvc image build`)"
    started = time.monotonic()
    booted = await boot_probe(settings, image.kernel, image.initrd)
    verdict = "kvm" if booted else "tcg"
    why = (
        f"a probe guest {'booted' if booted else 'did not boot'} under KVM "
        f"in {time.monotonic() - started:.1f}s (timeout {settings.probe_timeout_s}s)"
    )
    record = {"key": probe_key(settings), "accelerator": verdict, "why": why, "at": time.time()}
    save_verdict(settings, record)
    log.info("accelerator probe: %s (%s)", verdict, why)
    return verdict, why


def save_verdict(settings: QemuSettings, record: dict[str, object]) -> None:
    with contextlib.suppress(OSError):
        Path(settings.cache_dir).mkdir(parents=True, exist_ok=True)
        (Path(settings.cache_dir) / VERDICT_FILE).write_text(json.dumps(record) + "\n")


def serial_says(serial: Path, marker: bytes) -> bool:
    try:
        return marker in serial.read_bytes()
    except FileNotFoundError:
        return False


async def boot_probe(settings: QemuSettings, kernel: Path, initrd: Path) -> bool:
    with tempfile.TemporaryDirectory(prefix="hvc-kvm-probe-") as tmp:
        serial = Path(tmp) / "serial.log"
        argv = [
            settings.binary, "-accel", "kvm", "-machine", settings.machine, "-cpu", "host",
            "-m", "128M", "-nodefaults", "-no-user-config", "-display", "none",
            "-serial", f"file:{serial}", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 quiet",
        ]  # fmt: skip
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError:
            return False
        try:
            deadline = time.monotonic() + settings.probe_timeout_s
            while time.monotonic() < deadline and proc.returncode is None:
                if serial_says(serial, BOOT_MARKER):
                    return True
                await asyncio.sleep(0.2)
            return False
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
