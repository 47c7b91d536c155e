"""Fixtures of the driver tests: the test guest image, run dirs whose VMs are always killed."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.drivers.runtime import kill_all, running_pids
from hvcluster.guestimage.image import DEFAULT_CACHE, GuestImage, build_image
from tests.waiting import wait_for_sync

CACHE = Path(os.environ.get("HVC_CACHE", str(DEFAULT_CACHE)))


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """The test guest (built once per host by scripts/install; a no-op when cached)."""
    return build_image(CACHE, log=lambda _: None)


@pytest.fixture
def qemu_settings(guest_image: GuestImage) -> QemuSettings:
    return QemuSettings(accelerator="tcg", cache_dir=CACHE)


@pytest.fixture
def run_dirs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``run_dirs("n1")``: a node's runtime dir. Every VM process found in any of them is
    SIGKILLed after the test, pass or fail."""
    made: list[Path] = []

    def make(node: str) -> Path:
        d = tmp_path / node
        d.mkdir(exist_ok=True)
        made.append(d)
        return d

    yield make
    for d in made:
        kill_all(d)
    wait_for_sync(lambda: not any(running_pids(d) for d in made), 10, "the VM processes gone")
