"""The browser libraries' install: integrity checked, only the listed files taken, a cached
tarball reused without the network, what is missing named."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from hvcluster.web import vendor
from hvcluster.web.vendor import Package, VendorError


def tarball(files: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in links:
            info = tarfile.TarInfo(f"package/{name}")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return buf.getvalue()


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def test_integrity_matches_only_the_same_bytes() -> None:
    data = b"some tarball"
    assert vendor.integrity_ok(data, sri(data))
    assert not vendor.integrity_ok(data + b"!", sri(data))
    assert not vendor.integrity_ok(data, "sha1-" + base64.b64encode(b"x" * 20).decode())


def test_extract_takes_the_listed_files_and_folders_only(tmp_path: Path) -> None:
    p = Package("@x/lib", "1.0.0", ("dist/lib.js", "core/"))
    tgz = tmp_path / "lib.tgz"
    tgz.write_bytes(
        tarball(
            {"dist/lib.js": b"js", "dist/other.js": b"no", "core/a.js": b"a", "core/b/c.js": b"c"},
            links=("core/evil.js",),
        )
    )
    dest = tmp_path / "vendor"
    dest.mkdir()
    vendor.extract(p, tgz, dest)
    got = sorted(str(f.relative_to(dest)) for f in dest.rglob("*") if f.is_file())
    assert got == ["@x/lib/core/a.js", "@x/lib/core/b/c.js", "@x/lib/dist/lib.js"]
    assert vendor.missing([p], dest) == []


def test_extract_names_a_listed_file_the_package_lacks(tmp_path: Path) -> None:
    p = Package("lib", "1.0.0", ("dist/lib.js", "dist/gone.js"))
    tgz = tmp_path / "lib.tgz"
    tgz.write_bytes(tarball({"dist/lib.js": b"js"}))
    (tmp_path / "v").mkdir()
    with pytest.raises(VendorError, match=r"lib@1\.0\.0 has no dist/gone\.js"):
        vendor.extract(p, tgz, tmp_path / "v")


def test_install_from_a_checked_cache_needs_no_network_and_is_idempotent(tmp_path: Path) -> None:
    data = tarball({"dist/lib.js": b"js", "LICENSE": b"MIT"})
    manifest = tmp_path / "vendor.json"
    entry = {"name": "lib", "version": "1.0.0", "files": ["dist/lib.js", "LICENSE"]}
    manifest.write_text(json.dumps({"packages": [entry]}))
    cache = tmp_path / "cache"
    (cache / "npm").mkdir(parents=True)
    (cache / "npm" / "lib-1.0.0.tgz").write_bytes(data)
    (cache / "npm" / "lib-1.0.0.integrity").write_text(sri(data))
    dest = tmp_path / "static"
    # The registry is unreachable here: a download would raise, so the cache was used.
    assert vendor.install(cache, dest, manifest) is True
    assert (dest / "lib" / "dist" / "lib.js").read_bytes() == b"js"
    assert vendor.install(cache, dest, manifest) is False
    (dest / "lib" / "LICENSE").unlink()
    assert vendor.missing(vendor.load_manifest(manifest), dest) == ["lib/LICENSE"]
    assert vendor.install(cache, dest, manifest) is True  # repaired


def test_the_manifest_refuses_a_path_leaving_the_package(tmp_path: Path) -> None:
    manifest = tmp_path / "vendor.json"
    manifest.write_text(
        json.dumps({"packages": [{"name": "x", "version": "1", "files": ["../a"]}]})
    )
    with pytest.raises(VendorError, match="leaves the package"):
        vendor.load_manifest(manifest)
    manifest.write_text(json.dumps({"packages": [{"name": "x", "files": []}]}))
    with pytest.raises(VendorError, match="'version'"):
        vendor.load_manifest(manifest)


def test_the_real_manifest_lists_the_consoles_libraries() -> None:
    names = {p.name for p in vendor.load_manifest()}
    assert {"htmx.org", "@xterm/xterm", "@novnc/novnc"} <= names
