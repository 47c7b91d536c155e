"""The host side of the guests' counter (sector 0: busybox, sector 1: Debian) and the
Debian mirror the image build takes from apt's configuration."""

from __future__ import annotations

from pathlib import Path

from hvcluster.guestimage.debian import DEFAULT_MIRROR, configured_mirror, recipe_id
from hvcluster.guestimage.testguest import read_counter


def record(n: int) -> bytes:
    return f"HVCCOUNTER1 {n:020d}\n".encode().ljust(512, b"\0")


def test_the_counter_is_read_from_sector_0_or_sector_1(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox.raw"
    busybox.write_bytes(record(42) + bytes(512))
    debian = tmp_path / "debian.raw"
    mbr = b"\xfa\x31\xc0" + bytes(507) + b"\x55\xaa"
    debian.write_bytes(mbr + record(7) + bytes(1024))
    blank = tmp_path / "blank.raw"
    blank.write_bytes(bytes(2048))
    assert read_counter(busybox, "raw") == 42
    assert read_counter(debian, "raw") == 7
    assert read_counter(blank, "raw") == 0


def test_the_mirror_is_the_first_debian_one_apt_knows(tmp_path: Path) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\n# a comment: URIs: http://wrong/debian\n"
        "URIs: http://mirror.example/debian/\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
    )
    assert configured_mirror((tmp_path / "sources.list", d)) == "http://mirror.example/debian"
    lst = tmp_path / "sources.list"
    lst.write_text("deb [arch=amd64] http://other.example/debian bookworm main\n")
    assert configured_mirror((lst, d)) == "http://other.example/debian"
    assert configured_mirror((tmp_path / "none",)) == DEFAULT_MIRROR


def test_the_recipe_changes_with_the_first_boot_user_and_key() -> None:
    assert recipe_id() == recipe_id("", "")
    assert recipe_id("ann", "ssh-ed25519 AAAA ann") != recipe_id()
    assert recipe_id("ann", "ssh-ed25519 AAAA ann") != recipe_id("bob", "ssh-ed25519 AAAA ann")
