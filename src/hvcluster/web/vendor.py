"""The dashboard's browser libraries (htmx, xterm.js, noVNC), from the npm registry, with no
JS build step: the manifest ``vendor.json`` beside this file names each package, its version
and the files the pages load. ``python -m hvcluster.web.vendor install`` (run by
scripts/install) fetches each tarball once into ``$HVC_CACHE/npm``, checks it against the
integrity hash the registry's metadata gives (and again each later run, from the cache, so a
changed cache file is refused, not served), and copies the named files to ``static/vendor/NAME/``
(gitignored), which the agent serves at ``/static/vendor/NAME/``.

Stdlib only, and nothing else of ours: it runs from the install script before any agent runs,
and the pages ask :func:`missing` to say clearly what is absent instead of failing silently.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
MANIFEST = HERE / "vendor.json"
VENDOR_DIR = HERE / "static" / "vendor"
REGISTRY = "https://registry.npmjs.org"
STAMP = ".installed.json"  # in VENDOR_DIR: the manifest's packages last installed
TIMEOUT_S = 60


class VendorError(Exception):
    """A package cannot be installed as the manifest says (the message says which and why)."""


@dataclass(frozen=True)
class Package:
    name: str  # as npm names it, e.g. "@xterm/xterm"
    version: str
    files: tuple[str, ...]  # paths inside the package; a trailing "/" is a whole folder

    @property
    def cache_name(self) -> str:
        return f"{self.name.replace('/', '+')}-{self.version}.tgz"


def load_manifest(path: Path = MANIFEST) -> list[Package]:
    """The manifest's packages; :class:`VendorError` naming the entry and field that is wrong."""
    data = json.loads(path.read_text())
    packages: list[Package] = []
    for i, entry in enumerate(data.get("packages", [])):
        for field in ("name", "version", "files"):
            if field not in entry:
                raise VendorError(f"{path}: package #{i} has no {field!r}")
        files = tuple(entry["files"])
        for f in files:
            if f.startswith("/") or ".." in Path(f).parts:
                raise VendorError(f"{path}: {entry['name']}: file {f!r} leaves the package")
        packages.append(Package(entry["name"], entry["version"], files))
    return packages


def missing(packages: list[Package] | None = None, dest: Path = VENDOR_DIR) -> list[str]:
    """The manifest's files absent from ``dest``, as ``NAME/PATH`` (empty: all there)."""
    absent: list[str] = []
    for p in load_manifest() if packages is None else packages:
        for f in p.files:
            target = dest / p.name / f
            present = (
                any(target.iterdir()) if f.endswith("/") and target.is_dir() else (target.is_file())
            )
            if not present:
                absent.append(f"{p.name}/{f}")
    return absent


def integrity_ok(data: bytes, integrity: str) -> bool:
    """Whether ``data`` has the registry's Subresource-Integrity hash (``sha512-<base64>``;
    several, space-separated: any of the strongest we know)."""
    for item in integrity.split():
        algo, _, digest = item.partition("-")
        if algo in ("sha512", "sha384", "sha256"):
            mine = base64.b64encode(hashlib.new(algo, data).digest()).decode()
            if mine == digest:
                return True
    return False


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
        body: bytes = r.read()
        return body


def registry_dist(p: Package) -> tuple[str, str]:
    """(tarball url, integrity) of ``p`` from the registry's metadata of that version."""
    meta = json.loads(_get(f"{REGISTRY}/{p.name}/{p.version}"))
    dist = meta.get("dist", {})
    if "integrity" not in dist or "tarball" not in dist:
        raise VendorError(f"{p.name}@{p.version}: the registry's metadata has no dist integrity")
    return str(dist["tarball"]), str(dist["integrity"])


def cached_tarball(p: Package, cache: Path, log: bool = True) -> bytes:
    """The package's tarball, checked: from the cache when it is there and still matches the
    integrity recorded at download, else downloaded and checked against the registry."""
    tgz = cache / p.cache_name
    recorded = tgz.with_suffix(".integrity")
    if tgz.is_file() and recorded.is_file():
        data = tgz.read_bytes()
        if integrity_ok(data, recorded.read_text().strip()):
            return data
        if log:
            print(f"[vendor] cached {tgz.name} does not match its integrity: fetching again")
    url, integrity = registry_dist(p)
    if log:
        print(f"[vendor] downloading {p.name}@{p.version}")
    data = _get(url)
    if not integrity_ok(data, integrity):
        raise VendorError(f"{p.name}@{p.version}: the tarball does not match {integrity[:20]}...")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = tgz.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(tgz)
    recorded.write_text(integrity + "\n")
    return data


def extract(p: Package, tarball: Path, dest: Path) -> None:
    """Copies the package's listed files out of ``tarball`` into ``dest/NAME`` (replaced
    whole, so a file dropped from the manifest goes too). Only regular files under the
    listed paths are taken: no links, nothing outside the package folder."""
    wanted_files = {f for f in p.files if not f.endswith("/")}
    wanted_dirs = tuple(f for f in p.files if f.endswith("/"))
    found: set[str] = set()
    target = dest / p.name
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
    try:
        with tarfile.open(tarball) as tar:
            for member in tar.getmembers():
                _, _, rel = member.name.partition("/")  # npm tarballs: "package/..."
                if not member.isfile() or not rel or ".." in Path(rel).parts:
                    continue
                under = next((d for d in wanted_dirs if rel.startswith(d)), None)
                if rel not in wanted_files and under is None:
                    continue
                src = tar.extractfile(member)
                if src is None:
                    continue
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(src.read())
                found.add(under or rel)
        absent = sorted(set(p.files) - found)
        if absent:
            raise VendorError(f"{p.name}@{p.version} has no {', '.join(absent)}")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def install(cache: Path, dest: Path = VENDOR_DIR, manifest: Path = MANIFEST) -> bool:
    """Brings ``dest`` to what the manifest says; False when it already was (no network)."""
    packages = load_manifest(manifest)
    wanted = [[p.name, p.version, list(p.files)] for p in packages]
    stamp = dest / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted and not missing(packages, dest):
        return False
    dest.mkdir(parents=True, exist_ok=True)
    npm_cache = cache / "npm"
    for p in packages:
        cached_tarball(p, npm_cache)
        extract(p, npm_cache / p.cache_name, dest)
    known = {p.name.split("/")[0] for p in packages}
    for old in dest.iterdir():  # packages dropped from the manifest
        if old.is_dir() and old.name not in known:
            shutil.rmtree(old)
    stamp.write_text(json.dumps(wanted))
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "install":
        print("usage: python -m hvcluster.web.vendor install CACHE_DIR", file=sys.stderr)
        return 2
    try:
        changed = install(Path(argv[1]))
    except (VendorError, OSError, ValueError) as e:
        print(f"[vendor] {e}", file=sys.stderr)
        return 1
    print("[vendor] browser libraries " + ("installed" if changed else "up to date"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
