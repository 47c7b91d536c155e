"""``hvc image build --os debian``: a Debian 12 disk image that boots from its own disk.

debootstrap (minbase, no recommends: systemd, udev, dbus, the kernel, openssh-server, iproute2)
from the configured Debian mirror into a directory; the guest files of
:mod:`hvcluster.guestimage.debian_files` (the counter service, the first-boot unit, fstab,
a DHCP network, a serial console getty, which systemd starts by itself for
``console=ttyS0``); then ``mkfs.ext4 -d`` makes the root file system from that directory
straight into the partition of a raw disk (no loop device needed for that), extlinux is
installed into it (mounted through a loop device at the partition's offset) with syslinux's
MBR in sector 0, and the result becomes the cached base image
``<cache>/debian/debian12-<recipe>.qcow2``. A VM's disk is a thin qcow2 overlay on it
(:meth:`DebianImage.create_disk`). Needs root (debootstrap, chroot, mount).

The downloaded packages are kept in ``<cache>/debootstrap-debs``; the image is rebuilt only
when its recipe (the package list, the guest files, the first-boot user and key) changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from hvcluster.guestimage import debian_files as files
from hvcluster.guestimage.image import DEFAULT_CACHE, ImageBuildFailed, Log, run
from hvcluster.host.qemuimg import qemu_img_blocking
from hvcluster.models.vm import Boot

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# dbus: systemd-logind does not start without the system bus, and logind is what powers the
# guest off on the ACPI power button (QEMU's system_powerdown, the driver's clean shutdown):
# without it the guest ignores the button, is forced off after the timeout and leaves an
# unreplayed ext4 journal. About 1 MiB; acpid with a handler script would be no smaller.
PACKAGES = (
    "systemd", "systemd-sysv", "udev", "dbus", "linux-image-amd64", "openssh-server", "iproute2"
)  # fmt: skip
DISK_MIB = 2048
DEBIAN_MEMORY_MIB = 256  # systemd and the kernel's page cache: 128 MiB boots but barely
PART_START_SECTOR = 2048
MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
TOOLS = ("debootstrap", "extlinux", "losetup", "mkfs.ext4", "e2fsck", "mount", "umount", "chroot")
# Bumped by any change of the build steps below (the guest files are hashed in as well).
FORMAT = 1
SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


@dataclass(frozen=True)
class DebianImage:
    """A built Debian guest: the base image that VM disks are overlays of."""

    base: Path
    kernel_version: str
    mirror: str

    def boot(self) -> Boot:
        """The ``Boot`` of a VM spec for this guest: none, QEMU boots the disk."""
        return Boot()

    def create_disk(self, path: Path) -> Path:
        """A new VM disk: a thin qcow2 overlay on the base image (the base is never written)."""
        qemu_img_blocking(
            "create", "-q", "-f", "qcow2", "-b", str(self.base), "-F", "qcow2", str(path)
        )
        return Path(path)


def image_dir(cache: Path) -> Path:
    return Path(cache) / "debian"


def recipe_id(user: str = "", ssh_key: str = "") -> str:
    """What the build makes; a cached image of another recipe is rebuilt (the mirror is not
    part of it: the same suite from another mirror is the same system)."""
    parts = [
        str(FORMAT), SUITE, ",".join(PACKAGES), str(DISK_MIB),
        files.COUNTER_SCRIPT, files.COUNTER_UNIT, files.FIRSTBOOT_SCRIPT, files.FIRSTBOOT_UNIT,
        files.NETWORK, files.FSTAB, files.EXTLINUX_CONF, files.INITRAMFS_CONF,
        files.INITRAMFS_MODULES, files.SYSTEM_CONF, files.firstboot_conf(user, ssh_key),
    ]  # fmt: skip
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def configured_mirror(sources: tuple[Path, ...] = SOURCES) -> str:
    """The first Debian (not security) mirror apt is configured with on this host."""
    paths: list[Path] = []
    for source in sources:
        if source.is_dir():
            paths += sorted(source.glob("*.sources")) + sorted(source.glob("*.list"))
        elif source.is_file():
            paths.append(source)
    for path in paths:
        text = path.read_text(errors="replace")
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.match(r"^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+)", line)
            if m and "security" not in m.group(1) and m.group(1).rstrip("/").endswith("debian"):
                return m.group(1).rstrip("/")
    return DEFAULT_MIRROR


def cached_debian_image(
    cache: Path = DEFAULT_CACHE, user: str = "", ssh_key: str = ""
) -> DebianImage | None:
    """The Debian image built in ``cache`` if complete and of this recipe, else None."""
    try:
        data = json.loads((image_dir(cache) / "manifest.json").read_text())
        image = DebianImage(Path(data["base"]), data["kernel_version"], data["mirror"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    if data.get("recipe") != recipe_id(user, ssh_key) or not image.base.is_file():
        return None
    return image


def require_debian_image(cache: Path = DEFAULT_CACHE) -> DebianImage:
    """The cached Debian image of any first-boot config (the lab and tests need none)."""
    try:
        data = json.loads((image_dir(cache) / "manifest.json").read_text())
        image = DebianImage(Path(data["base"]), data["kernel_version"], data["mirror"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        image = None
    if image is None or not image.base.is_file():
        raise ImageBuildFailed(
            f"no Debian guest image in {cache}: run `hvc image build --os debian --cache {cache}`"
        )
    return image


def build_debian_image(
    cache: Path = DEFAULT_CACHE,
    force: bool = False,
    log: Log = print,
    mirror: str | None = None,
    user: str = "",
    ssh_key: str = "",
) -> DebianImage:
    """Build the Debian guest into ``cache`` unless an up-to-date one is there already."""
    cache = Path(cache).absolute()
    if not force and (image := cached_debian_image(cache, user, ssh_key)) is not None:
        log(f"Debian guest image up to date: {image.base}")
        return image
    if os.geteuid() != 0:
        raise ImageBuildFailed("building the Debian image needs root (debootstrap, mount)")
    for tool in TOOLS:
        if shutil.which(tool) is None:
            raise ImageBuildFailed(f"{tool} is not installed; the Debian image build needs it")
    if not MBR.is_file():
        raise ImageBuildFailed(f"{MBR} is missing: install the syslinux-common package")
    mirror = mirror or configured_mirror()
    recipe = recipe_id(user, ssh_key)
    out = image_dir(cache)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=cache, prefix=".debian-build-") as tmp:
        tree = Path(tmp) / "root"
        debootstrap(tree, cache / "debootstrap-debs", mirror, log)
        version = configure(tree, user, ssh_key, log)
        raw = Path(tmp) / "disk.raw"
        make_disk(tree, raw, log)
        base = out / f"debian12-{recipe}.qcow2"
        log(f"converting to {base.name}")
        tmp_base = base.with_name(f".{base.name}.tmp")
        qemu_img_blocking(
            "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(tmp_base), timeout_s=600
        )
        tmp_base.replace(base)
    remove_stale(out, base)
    manifest = {
        "base": str(base),
        "kernel_version": version,
        "mirror": mirror,
        "recipe": recipe,
        "built": time.time(),
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size_mib = base.stat().st_size / 2**20
    log(
        f"Debian guest image built in {manifest['build_seconds']} s: {base} "
        f"({size_mib:.0f} MiB, kernel {version})"
    )
    return DebianImage(base, version, mirror)


def debootstrap(tree: Path, debs: Path, mirror: str, log: Log) -> None:
    debs.mkdir(parents=True, exist_ok=True)
    log(f"debootstrap {SUITE} from {mirror} (minbase + {', '.join(PACKAGES)})")
    argv = [
        "debootstrap", "--variant=minbase", f"--cache-dir={debs}",
        f"--include={','.join(PACKAGES)}", SUITE, str(tree), mirror,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800)
    if done.returncode != 0:
        log_file = tree / "debootstrap" / "debootstrap.log"
        detail = log_file.read_text(errors="replace")[-800:] if log_file.is_file() else ""
        raise ImageBuildFailed(f"debootstrap failed: {done.stderr.strip()[-800:]} {detail}".strip())


def configure(tree: Path, user: str, ssh_key: str, log: Log) -> str:
    """Write the guest's files and its small initramfs; the kernel version."""
    log("configuring the guest (counter service, first-boot unit, serial console, network)")
    write(tree / "etc/hostname", "hvc-guest\n")
    write(tree / "etc/fstab", files.FSTAB)
    write(tree / "etc/machine-id", "")  # each VM makes its own at first boot
    write(tree / "usr/local/sbin/hvc-counter", files.COUNTER_SCRIPT, 0o755)
    write(tree / "usr/local/sbin/hvc-firstboot", files.FIRSTBOOT_SCRIPT, 0o755)
    write(tree / "etc/hvc/firstboot.conf", files.firstboot_conf(user, ssh_key), 0o600)
    units = tree / "etc/systemd/system"
    write(units / "hvc-counter.service", files.COUNTER_UNIT)
    write(units / "hvc-firstboot.service", files.FIRSTBOOT_UNIT)
    write(tree / "etc/systemd/network/20-dhcp.network", files.NETWORK)
    write(tree / "etc/systemd/system.conf.d/hvc-timeouts.conf", files.SYSTEM_CONF)
    write(tree / "etc/initramfs-tools/conf.d/hvc.conf", files.INITRAMFS_CONF)
    write(tree / "etc/initramfs-tools/modules", files.INITRAMFS_MODULES)
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # made per VM by hvc-firstboot
    chroot(tree, ["systemctl", "enable", "hvc-counter.service", "hvc-firstboot.service"])
    chroot(tree, ["systemctl", "enable", "systemd-networkd.service"])
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise ImageBuildFailed("debootstrap installed no kernel (/boot/vmlinuz-*)")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    log(f"initramfs for {version} (virtio + ext4 only)")
    (tree / "proc").mkdir(exist_ok=True)
    run(["mount", "-t", "proc", "proc", str(tree / "proc")])
    try:
        chroot(tree, ["update-initramfs", "-u", "-k", version])
    finally:
        run(["umount", str(tree / "proc")])
    conf = files.EXTLINUX_CONF.replace("/vmlinuz", f"/boot/vmlinuz-{version}").replace(
        "/initrd.img", f"/boot/initrd.img-{version}"
    )
    write(tree / "boot/extlinux/extlinux.conf", conf)
    chroot(tree, ["apt-get", "clean"])
    for lists in (tree / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()
    return version


def make_disk(tree: Path, raw: Path, log: Log) -> None:
    """A raw MBR disk: syslinux's MBR, one bootable ext4 partition made from ``tree``."""
    log(f"making the {DISK_MIB} MiB disk (mkfs.ext4 -d, extlinux)")
    with open(raw, "wb") as f:
        f.truncate(DISK_MIB * 2**20)
    offset = PART_START_SECTOR * 512
    part_bytes = DISK_MIB * 2**20 - offset
    run([
        # ^64bit: syslinux's ext4 reader cannot follow 64-bit block group descriptors (it
        # prints its banner, then hangs); a 2 GiB file system does not need them.
        "mkfs.ext4", "-q", "-F", "-O", "^64bit", "-L", files.ROOT_LABEL, "-d", str(tree),
        "-E", f"offset={offset}", str(raw), f"{part_bytes // 1024}k",
    ])  # fmt: skip
    with open(raw, "r+b") as f:
        f.write(mbr_sector(MBR.read_bytes()[:440], PART_START_SECTOR, part_bytes // 512))
    mnt = raw.with_name("mnt")
    mnt.mkdir()
    run(["mount", "-o", f"loop,offset={offset}", str(raw), str(mnt)])
    try:
        run(["extlinux", "--install", str(mnt / "boot/extlinux")])
    finally:
        run(["umount", str(mnt)])
    fsck_disk(raw, "raw")


def mbr_sector(boot_code: bytes, start: int, sectors: int) -> bytes:
    """Sector 0: ``boot_code``, then one bootable Linux partition (LBA addressing; the CHS
    fields say "beyond CHS", as for any disk this size)."""
    chs_max = b"\xfe\xff\xff"
    entry = b"\x80" + chs_max + b"\x83" + chs_max + struct.pack("<II", start, sectors)
    signature = struct.pack("<I", zlib.crc32(boot_code))  # any non-zero disk id
    sector = boot_code.ljust(440, b"\0") + signature + b"\0\0" + entry + bytes(48) + b"\x55\xaa"
    assert len(sector) == 512
    return sector


def chroot(tree: Path, argv: list[str]) -> str:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(
        ["chroot", str(tree), *argv], capture_output=True, text=True, check=False, env=env
    )
    if done.returncode != 0:
        raise ImageBuildFailed(f"in the guest, {' '.join(argv)} failed: {done.stderr[-800:]}")
    return done.stdout


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def remove_stale(out: Path, keep: Path) -> None:
    """Base images of other recipes built more than a day ago: VM disks of a lab still
    running may be overlays of the recent ones."""
    for stale in out.glob("debian12-*.qcow2"):
        if stale != keep and time.time() - stale.stat().st_mtime > 86_400.0:
            stale.unlink()


def fsck_disk(disk: Path, fmt: str = "qcow2", replay_journal: bool = False) -> str:
    """``e2fsck -n -f`` of the root file system of a Debian guest's disk (not in use): its
    report; raises if it finds anything wrong. Works on a raw copy through a loop device, so
    the disk itself is never written. ``replay_journal``: first replay the file system's
    journal on the copy, as the guest's next boot would after a power cut (a crash leaves
    committed transactions in the journal, which a read-only check reports as errors)."""
    with tempfile.TemporaryDirectory(prefix="hvc-fsck-") as tmp:
        raw = Path(disk)
        if fmt != "raw" or replay_journal:
            raw = Path(tmp) / "disk.raw"
            qemu_img_blocking(
                "convert", "-q", "-f", fmt, "-O", "raw", str(disk), str(raw), timeout_s=600
            )
        offset = PART_START_SECTOR * 512
        mode = [] if replay_journal else ["--read-only"]
        dev = run(["losetup", "--find", "--show", *mode, f"--offset={offset}", str(raw)]).strip()
        try:
            if replay_journal:  # 0: nothing to replay, 1: replayed; more is a real error
                replayed = subprocess.run(
                    ["e2fsck", "-y", "-E", "journal_only", dev],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                if replayed.returncode > 1:
                    raise ImageBuildFailed(
                        f"replaying the journal of {disk} failed ({replayed.returncode}): "
                        + (replayed.stdout + replayed.stderr).strip()
                    )
            done = subprocess.run(
                ["e2fsck", "-n", "-f", dev], capture_output=True, text=True, check=False
            )
        finally:
            subprocess.run(["losetup", "-d", dev], check=False)
    report = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise ImageBuildFailed(f"e2fsck -n of {disk} found errors ({done.returncode}): {report}")
    return report
