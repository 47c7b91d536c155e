"""A real QEMU guest whose disk lives on a shared volume: the agent's volume check tells the
driver where the volume is, the agent creates the sized disk with qemu-img, the guest boots
and writes its counter there."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from hvcluster.agent.disks import VolumeDisks
from hvcluster.agent.resources import HostResources, Resources
from hvcluster.drivers.qemu.driver import QemuDriver
from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.guestimage.image import GuestImage
from hvcluster.guestimage.testguest import read_counter
from hvcluster.host.network import MemoryLinks
from hvcluster.models.base import encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.storage import MARKER, Volume
from hvcluster.models.vm import Disk, VMSpec
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from tests.waiting import wait_for

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(60)]
KEYS = Keys("t")


async def test_a_vm_with_its_disk_on_a_volume_boots(
    store: MemoryStore,
    run_dirs: Callable[[str], Path],
    qemu_settings: QemuSettings,
    guest_image: GuestImage,
    tmp_path: Path,
) -> None:
    csv = tmp_path / "csv1"
    csv.mkdir()
    volume = Volume(name="csv1", path=str(csv), id=uuid.uuid4().hex)
    (csv / MARKER).write_text(volume.id + "\n")  # placed by an admin ('hvc volume mark')
    await store.put(KEYS.volume("csv1"), encode(volume))
    boot = guest_image.boot()
    assert boot.kernel is not None
    # The guest's kernel and initrd are host files: allowed from the image cache, as the lab does.
    allowed = (str(Path(boot.kernel).parent),)
    await store.put(KEYS.config, encode(ClusterConfig(allowed_disk_dirs=allowed)))
    driver = QemuDriver(run_dirs("n1"), qemu_settings)
    disks = VolumeDisks(store, KEYS, "n1", lambda: 0)
    reported: list[Resources] = []

    async def report(r: Resources) -> None:
        reported.append(r)

    async def say(kind: str, subject: str, reason: str) -> None:
        pass

    resources = HostResources(store, KEYS, "n1", MemoryLinks(), driver, report, say)
    resources.on_mounts.append(lambda mounts: setattr(disks, "mounts", mounts))
    assert (await resources.check()).volumes == ("csv1",)
    assert driver.settings.volumes == {"csv1": csv}
    disk = Disk(volume="csv1", path="vms/c1/root.qcow2", size_gib=1 / 64)
    spec = VMSpec(name="c1", memory_mib=128, disks=(disk,), boot=boot)
    assert await disks.prepare(spec) == ["created csv1:vms/c1/root.qcow2 (0.015625 GiB)"]
    image = csv / "vms" / "c1" / "root.qcow2"
    await driver.start(spec, 1)
    try:
        await wait_for(lambda: read_counter(image) >= 2, 45, "the guest's counter on the volume")
    finally:
        await driver.kill("c1")
