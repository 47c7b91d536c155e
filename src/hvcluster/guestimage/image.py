"""``hvc image build``: the small test/demo guest, made from Debian packages.

The kernel is the package ``linux-image-amd64`` depends on (``apt-get download`` +
``dpkg-deb -x``); the initramfs is busybox-static, the virtio modules (the extracted tree has
no ``modules.dep``: each module's dependencies come from ``modinfo -F depends``) and the /init
of :mod:`hvcluster.guestimage.guest_init`. Everything lands in ``<cache>/guest/``; a manifest
records what was built from what, so a second build with nothing changed does nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from hvcluster.guestimage.guest_init import INIT_SCRIPT
from hvcluster.models.errors import HvcError
from hvcluster.models.vm import Boot

DEFAULT_CACHE = Path("/var/cache/hvcluster")
META_PACKAGE = "linux-image-amd64"
BUSYBOX = Path("/bin/busybox")
# The transport first, then the devices; their dependencies are pulled in by modinfo.
# virtio_console and pvpanic_mmio (QEMU's ISA pvpanic, an ACPI QEMU0001 device): guest
# monitoring's heartbeat channel and panic report (drivers/qemu/heartbeat.py).
ROOT_MODULES = (
    "virtio_pci", "virtio_blk", "virtio_net", "button", "evdev", "virtio_console", "pvpanic_mmio",
)  # fmt: skip
CMDLINE = "console=ttyS0 quiet"
DAY_S = 86_400.0
# Bumped by any change of what goes into the image (the init script is hashed in as well).
FORMAT = 1

Log = Callable[[str], None]


class ImageBuildFailed(HvcError):
    """``hvc image build`` could not fetch the kernel or assemble the guest image."""


@dataclass(frozen=True)
class GuestImage:
    """A built test guest: direct-boot kernel and initrd."""

    kernel: Path
    initrd: Path
    kernel_version: str
    package: str

    def boot(self, extra_cmdline: str = "") -> Boot:
        """The ``Boot`` of a VM spec that boots this guest."""
        cmdline = f"{CMDLINE} {extra_cmdline}".strip()
        return Boot(kernel=str(self.kernel), initrd=str(self.initrd), cmdline=cmdline)


def image_dir(cache: Path) -> Path:
    return Path(cache) / "guest"


def recipe_id() -> str:
    """Identifies what the build makes; a cached image built from another recipe is rebuilt."""
    h = hashlib.sha256(f"{FORMAT}\n{ROOT_MODULES}\n{CMDLINE}\n{INIT_SCRIPT}".encode())
    return h.hexdigest()[:16]


def recipe_manifest(cache: Path) -> Path:
    """The manifest of this recipe's build. ``manifest.json`` names the last build; checkouts
    of other versions sharing the cache (other recipes) find theirs by this name too."""
    return image_dir(cache) / f"manifest-{recipe_id()}.json"


def cached_image(cache: Path = DEFAULT_CACHE) -> GuestImage | None:
    """The image built in ``cache`` if it is complete and of the current recipe, else None."""
    return _image_of(image_dir(cache) / "manifest.json") or _image_of(recipe_manifest(cache))


def _image_of(manifest: Path) -> GuestImage | None:
    try:
        data = json.loads(manifest.read_text())
        image = GuestImage(
            kernel=Path(data["kernel"]),
            initrd=Path(data["initrd"]),
            kernel_version=data["kernel_version"],
            package=data["package"],
        )
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    if (
        data.get("recipe") != recipe_id()
        or not image.kernel.is_file()
        or not image.initrd.is_file()
    ):
        return None
    return image


def require_image(cache: Path = DEFAULT_CACHE) -> GuestImage:
    image = cached_image(cache)
    if image is None:
        raise ImageBuildFailed(
            f"no test guest image in {cache}: run `hvc image build --cache {cache}`"
        )
    return image


def build_image(cache: Path = DEFAULT_CACHE, force: bool = False, log: Log = print) -> GuestImage:
    """Build the test guest into ``cache`` unless an up-to-date one is there already."""
    cache = Path(cache).absolute()
    if not force and (image := cached_image(cache)) is not None:
        log(f"guest image up to date: {image.kernel.parent} (kernel {image.kernel_version})")
        return image
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "modinfo", "cpio"):
        if shutil.which(tool) is None:
            raise ImageBuildFailed(f"{tool} is not installed; the image build needs it")
    if not BUSYBOX.is_file():
        raise ImageBuildFailed(f"{BUSYBOX} is missing: install the busybox-static package")
    out = image_dir(cache)
    out.mkdir(parents=True, exist_ok=True)
    package = kernel_package(log)
    deb = download(package, cache / "debs", log)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        tree = Path(tmp) / "kernel"
        log(f"extracting {deb.name}")
        run(["dpkg-deb", "-x", str(deb), str(tree)])
        kernels = sorted((tree / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise ImageBuildFailed(f"{deb.name} holds no /boot/vmlinuz-*")
        version = kernels[-1].name.removeprefix("vmlinuz-")
        modules = module_order(tree / "lib" / "modules" / version, ROOT_MODULES)
        kernel = out / f"vmlinuz-{version}"
        initrd = out / f"initrd-{version}-{recipe_id()}.img"
        shutil.copyfile(kernels[-1], kernel)
        log(f"initramfs: busybox + {', '.join(name for name, _ in modules)}")
        make_initramfs(modules, Path(tmp) / "initramfs", initrd)
    for stale in out.iterdir():
        if stale not in (kernel, initrd) and stale.name != "manifest.json":
            # Another recipe's initrd may still be booted by a checkout of another version
            # sharing this cache (and a VM it starts meanwhile): kept for a day.
            kept = stale.name.startswith(("initrd-", "manifest-"))
            if kept and time.time() - stale.stat().st_mtime < DAY_S:
                continue
            stale.unlink()
    manifest = {
        "kernel": str(kernel),
        "initrd": str(initrd),
        "kernel_version": version,
        "package": package,
        "recipe": recipe_id(),
        "built": time.time(),
    }
    text = json.dumps(manifest, indent=1) + "\n"
    recipe_manifest(cache).write_text(text)
    (out / "manifest.json").write_text(text)
    log(f"guest image built: {kernel} + {initrd.name}")
    return GuestImage(kernel=kernel, initrd=initrd, kernel_version=version, package=package)


def run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise ImageBuildFailed(f"{argv[0]}: {e}") from e
    if done.returncode != 0:
        raise ImageBuildFailed(f"{' '.join(argv)} failed: {done.stderr.strip()[-800:]}")
    return done.stdout


def kernel_package(log: Log) -> str:
    """The versioned kernel package that ``linux-image-amd64`` depends on."""
    for attempt in range(2):
        try:
            text = run(["apt-cache", "depends", META_PACKAGE])
        except ImageBuildFailed:
            text = ""
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("Depends:") and line.split()[1].startswith("linux-image-"):
                return line.split()[1]
        if attempt == 0:
            log("apt-get update (no package lists know linux-image-amd64 yet)")
            run(["apt-get", "update", "-q"])
    raise ImageBuildFailed(f"apt knows no kernel package that {META_PACKAGE} depends on")


def download(package: str, debs: Path, log: Log) -> Path:
    debs.mkdir(parents=True, exist_ok=True)
    have = sorted(debs.glob(f"{package}_*.deb"))
    if have:
        return have[-1]
    log(f"apt-get download {package}")
    try:
        run(["apt-get", "download", "-q", package], cwd=debs)
    except ImageBuildFailed:  # stale package lists name a version the mirror no longer has
        log("apt-get update, then download again")
        run(["apt-get", "update", "-q"])
        run(["apt-get", "download", "-q", package], cwd=debs)
    have = sorted(debs.glob(f"{package}_*.deb"))
    if not have:
        raise ImageBuildFailed(f"apt-get download {package} left no .deb in {debs}")
    return have[-1]


def module_order(moddir: Path, roots: Iterable[str]) -> list[tuple[str, Path]]:
    """The modules to load, each after the modules it depends on (``modinfo -F depends``)."""
    index = {}
    for ko in moddir.rglob("*.ko*"):
        index[ko.name.split(".ko")[0].replace("-", "_")] = ko
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        if name in chain:
            raise ImageBuildFailed(f"module dependency cycle: {' -> '.join((*chain, name))}")
        path = index.get(name)
        if path is None:
            raise ImageBuildFailed(f"kernel module {name} not found under {moddir}")
        deps = run(["modinfo", "-F", "depends", str(path)]).strip()
        for dep in filter(None, deps.split(",")):
            visit(dep, (*chain, name))
        seen.add(name)
        order.append((name, path))

    for root in roots:
        visit(root, ())
    return order


def make_initramfs(modules: list[tuple[str, Path]], tree: Path, target: Path) -> None:
    for sub in ("bin", "etc", "lib/modules", "proc", "sys", "dev", "tmp"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(BUSYBOX, tree / "bin" / "busybox")
    (tree / "bin" / "busybox").chmod(0o755)
    (tree / "bin" / "sh").symlink_to("busybox")
    init = tree / "init"
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)
    for name, path in modules:
        if path.suffix != ".ko":
            raise ImageBuildFailed(f"{path.name} is compressed; busybox insmod needs plain .ko")
        shutil.copyfile(path, tree / "lib" / "modules" / f"{name}.ko")
    (tree / "etc" / "hvc-modules").write_text("\n".join(name for name, _ in modules) + "\n")
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    listing = ("\n".join([".", *names]) + "\n").encode()
    archive = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"],
        cwd=tree,
        input=listing,
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise ImageBuildFailed(f"cpio failed: {archive.stderr.decode(errors='replace')[-800:]}")
    tmp = target.with_name(f".{target.name}.tmp")
    with gzip.open(tmp, "wb", compresslevel=6) as f:
        f.write(archive.stdout)
    tmp.replace(target)
