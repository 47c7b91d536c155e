"""The qemu driver's dealings with the host, without waiting for a guest: the QEMU binary,
bridges and taps, the KVM probe, the image build and the counter reader."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hvcluster.drivers.errors import HypervisorMissing, QemuFailed
from hvcluster.drivers.qemu.cmdline import tap_name
from hvcluster.drivers.qemu.driver import QemuDriver
from hvcluster.drivers.qemu.probe import VERDICT_FILE, decide_accelerator
from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.guestimage.image import (
    GuestImage,
    build_image,
    cached_image,
    image_dir,
    recipe_manifest,
)
from hvcluster.guestimage.testguest import create_disk, guest_spec, read_counter
from hvcluster.models.errors import DriverError
from hvcluster.models.lifecycle import VMState
from hvcluster.models.storage import bridge_name
from hvcluster.models.vm import Disk, Nic, VMSpec
from tests.drivers.conftest import CACHE
from tests.waiting import wait_for

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(60)]


async def test_absent_qemu_binary_is_a_clear_driver_error(
    run_dirs: Callable[[str], Path], qemu_settings: QemuSettings, guest_image: GuestImage
) -> None:
    settings = qemu_settings.model_copy(update={"binary": "/nonexistent/qemu-system-x86_64"})
    driver = QemuDriver(run_dirs("n1"), settings)
    with pytest.raises(HypervisorMissing, match="/nonexistent/qemu-system-x86_64"):
        await driver.start(guest_spec("x", guest_image), 1)
    with pytest.raises(HypervisorMissing):
        await driver.inventory()
    assert await driver.list() == []


async def test_qemu_refusing_to_start_says_why(
    run_dirs: Callable[[str], Path], qemu_settings: QemuSettings, guest_image: GuestImage
) -> None:
    settings = qemu_settings.model_copy(update={"machine": "no-such-machine"})
    driver = QemuDriver(run_dirs("n1"), settings)
    with pytest.raises(QemuFailed, match=r"vm x: .*unsupported machine type"):
        await driver.start(guest_spec("x", guest_image), 1)
    assert await driver.list() == []


async def test_a_disk_in_use_by_another_qemu_is_refused(
    run_dirs: Callable[[str], Path],
    qemu_settings: QemuSettings,
    guest_image: GuestImage,
    tmp_path: Path,
) -> None:
    """QEMU's image locking stays on: a second writer of the same disk does not start."""
    disk = create_disk(tmp_path / "one.qcow2")
    a, b = QemuDriver(run_dirs("n1"), qemu_settings), QemuDriver(run_dirs("n2"), qemu_settings)
    await a.start(guest_spec("w", guest_image, disk), 1)
    with pytest.raises(QemuFailed, match="lock"):
        await b.start(guest_spec("w", guest_image, disk), 2)
    await a.kill("w")


@pytest.fixture
def bridge() -> Iterator[str]:
    """A switch whose bridge has no uplink and no address, never set up: nothing leaves it."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    switch = f"tb{os.getpid() % 100000}"
    name = bridge_name(switch)  # the switch's bridge, as the agent would have made it
    subprocess.run(["ip", "link", "add", "name", name, "type", "bridge"], check=True)
    try:
        yield switch
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


async def test_nic_is_a_tap_on_its_bridge_with_the_spec_mac(
    run_dirs: Callable[[str], Path],
    qemu_settings: QemuSettings,
    guest_image: GuestImage,
    bridge: str,
) -> None:
    node = run_dirs("n1")
    driver = QemuDriver(node, qemu_settings)
    nic = Nic(switch=bridge, mac="52:54:00:ab:cd:ef")
    info = await driver.start(guest_spec("net", guest_image, nics=(nic,)), 1)
    tap = tap_name(node, "net", 0)
    assert bridge_of(tap) == bridge_name(bridge)
    assert info.pid is not None and "mac=52:54:00:ab:cd:ef" in cmdline(info.pid)
    await driver.kill("net")
    await wait_for(lambda: bridge_of(tap) is None, 2.5, "the tap gone with its QEMU")


def bridge_of(interface: str) -> str | None:
    master = Path(f"/sys/class/net/{interface}/master")
    return master.resolve().name if master.exists() else None


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().replace("\0", " ")


@pytest.mark.timeout(90)
async def test_kvm_probe_decides_once_and_is_cached(
    guest_image: GuestImage, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    (image_dir(cache)).mkdir(parents=True)
    # This recipe's manifest: ``manifest.json`` names the last build, maybe another recipe's.
    built = recipe_manifest(CACHE)
    shutil.copy(built, image_dir(cache) / built.name)
    assert cached_image(cache) is not None
    settings = QemuSettings(accelerator="auto", cache_dir=cache, probe_timeout_s=8)
    verdict, why = await decide_accelerator(settings)
    assert verdict in ("kvm", "tcg")
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert "probe guest" in why
        record = json.loads((cache / VERDICT_FILE).read_text())
        assert record["accelerator"] == verdict
        again, why_again = await decide_accelerator(settings)
        assert (again, why_again) == (verdict, "cached probe verdict")
    forced = settings.model_copy(update={"accelerator": "tcg"})
    assert (await decide_accelerator(forced))[0] == "tcg"


def test_image_build_is_cached(guest_image: GuestImage) -> None:
    manifest = image_dir(CACHE) / "manifest.json"
    before = manifest.stat().st_mtime_ns
    said: list[str] = []
    again = build_image(CACHE, log=said.append)
    assert again == guest_image
    assert manifest.stat().st_mtime_ns == before
    assert said and "up to date" in said[0]


def test_image_build_keeps_another_recipes_initrd_for_a_day(
    guest_image: GuestImage, tmp_path: Path
) -> None:
    """Checkouts of two versions may share a cache: a rebuild for one must not take away the
    initrd the other boots its guests from (for a day), but does not keep them for ever."""
    cache = tmp_path / "cache"
    (cache / "debs").mkdir(parents=True)
    for deb in (CACHE / "debs").glob("*.deb"):
        (cache / "debs" / deb.name).symlink_to(deb)
    out = image_dir(cache)
    out.mkdir(parents=True)
    recent, old = out / "initrd-other-recipe.img", out / "initrd-older-recipe.img"
    recent.write_bytes(b"x")
    old.write_bytes(b"x")
    two_days_ago = time.time() - 2 * 86_400
    os.utime(old, (two_days_ago, two_days_ago))
    built = build_image(cache, log=lambda _: None)
    assert built.initrd.is_file() and recent.is_file() and not old.exists()


def test_image_holds_the_virtio_modules_in_dependency_order(guest_image: GuestImage) -> None:
    listing = subprocess.run(
        f"zcat {guest_image.initrd} | cpio -i --to-stdout etc/hvc-modules 2>/dev/null",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert listing.index("virtio_ring") < listing.index("virtio") < listing.index("virtio_pci")
    assert listing.index("virtio") < listing.index("virtio_blk")
    assert listing.index("net_failover") < listing.index("virtio_net")


def test_counter_reader_on_raw_and_empty_disks(tmp_path: Path) -> None:
    raw = tmp_path / "c.raw"
    raw.write_bytes(b"HVCCOUNTER1 %020d\n" % 1234 + bytes(400))
    assert read_counter(raw, "raw") == 1234
    assert read_counter(create_disk(tmp_path / "e.qcow2")) == 0
    with pytest.raises(DriverError, match="qemu-img"):
        read_counter(tmp_path / "missing.qcow2")


async def test_a_vm_without_kernel_boots_from_its_first_disk(
    run_dirs: Callable[[str], Path], qemu_settings: QemuSettings, tmp_path: Path
) -> None:
    """A user's own image (a cloud image): no kernel in the spec, the firmware boots disk 0."""
    disk = create_disk(tmp_path / "own.qcow2")
    spec = VMSpec(name="own", disks=(Disk(path=str(disk)),))
    driver = QemuDriver(run_dirs("n1"), qemu_settings)
    info = await driver.start(spec, 1)
    assert info.state is VMState.RUNNING and info.pid is not None
    args = cmdline(info.pid)
    assert "-kernel" not in args and "bootindex=0" in args
    await driver.kill("own")


def test_hvc_image_show(guest_image: GuestImage, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hvcluster.cli.main import app

    shown = CliRunner().invoke(app, ["image", "show", "--cache", str(CACHE), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["kernel"] == str(guest_image.kernel)
    missing = CliRunner().invoke(app, ["image", "show", "--cache", str(tmp_path)])
    assert missing.exit_code == 1
    assert "hvc image build" in missing.output
