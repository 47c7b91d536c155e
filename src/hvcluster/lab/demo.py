"""The lab's demo VMs, created through the API like any client would."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx

from hvcluster.guestimage.debian import DEBIAN_MEMORY_MIB, require_debian_image
from hvcluster.guestimage.image import require_image
from hvcluster.guestimage.testguest import create_disk
from hvcluster.lab.state import LabState
from hvcluster.models.errors import HvcError

PRIORITIES = ("high", "medium", "low")


def demo_specs(
    state: LabState, count: int, cache_dir: Path, guest: str = "busybox"
) -> list[dict[str, Any]]:
    """``count`` small VMs: test guests with a counter disk (qemu) or simulated ones (sim).
    ``guest``: busybox (kernel + initramfs, the counter on a blank disk) or debian (booting
    from its own disk, a thin overlay of the cached Debian image)."""
    specs: list[dict[str, Any]] = []
    boot: dict[str, Any] = {}
    debian = None
    if state.driver == "qemu" and guest == "debian":
        debian = require_debian_image(cache_dir)
        boot = debian.boot().model_dump()
    elif state.driver == "qemu":
        boot = require_image(cache_dir).boot().model_dump()
    for i in range(count):
        name = f"demo-{i + 1}"
        spec: dict[str, Any] = {
            "name": name,
            "vcpus": 1,
            "memory_mib": 128,
            "ha": {"priority": PRIORITIES[i % len(PRIORITIES)]},
        }
        if state.driver == "qemu":
            disk = Path(state.shared_dir) / f"{name}.qcow2"
            if debian is not None:
                spec["memory_mib"] = DEBIAN_MEMORY_MIB
                if not disk.exists():
                    debian.create_disk(disk)
            else:
                make_disk(disk, size_mib=64)
            spec["boot"] = boot
            spec["disks"] = [{"path": str(disk)}]
        specs.append(spec)
    return specs


def make_disk(path: Path, size_mib: int) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    create_disk(path, size_mib)


def create_vms(api: str, specs: list[dict[str, Any]], token: str, ca: str = "") -> list[str]:
    """Create ``specs`` through the API at ``api`` (verified against ``ca`` if given)."""
    created = []
    headers = {"Authorization": f"Bearer {token}"}
    for spec in specs:
        verify = ssl.create_default_context(cafile=ca or None)
        r = httpx.post(f"{api}/api/v1/vms", json=spec, timeout=10, headers=headers, verify=verify)
        if r.status_code not in (200, 201, 202):
            raise HvcError(f"creating {spec['name']} failed: {r.status_code} {r.text}")
        created.append(spec["name"])
    return created
