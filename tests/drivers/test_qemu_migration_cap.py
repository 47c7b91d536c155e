"""A migration's bandwidth cap and its listen address, on real QEMU: the target listens on
the migration address it is given (not necessarily the API's: here another loopback
address), refuses one that is not this host's with the setting named, and the source sends
at no more than the migration's own cap (QEMU's max-bandwidth, and max-postcopy-bandwidth
with postcopy on), whatever the cluster's.

The guest is not waited for: a guest still booting has its kernel and initrd in memory,
enough to keep a stream of a few MiB/s busy for the seconds the test looks; the migration is
cancelled then (the VM runs on where it was)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hvcluster.drivers.errors import MigrationFailed, SpecError
from hvcluster.drivers.qemu.driver import QemuDriver
from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.guestimage.image import GuestImage
from hvcluster.guestimage.testguest import guest_spec
from hvcluster.models.config import MigrationSettings
from hvcluster.models.lifecycle import VMState
from hvcluster.models.migration import Migration, Progress, settings_for
from tests.drivers.test_qemu_migration_load import stop_all
from tests.waiting import wait_for

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(90)]

MIB = 1024 * 1024
CAP_MIB_S = 4
NOT_HERE = "192.0.2.7"  # TEST-NET-1: never an address of this host


async def test_the_target_listens_on_the_migration_address_and_the_source_keeps_the_cap(
    run_dirs: Callable[[str], Path], qemu_settings: QemuSettings, guest_image: GuestImage
) -> None:
    n1, n2 = run_dirs("n1"), run_dirs("n2")
    spec = guest_spec("capped", guest_image, memory_mib=128)
    one, two = QemuDriver(n1, qemu_settings), QemuDriver(n2, qemu_settings)
    cluster = MigrationSettings(postcopy=True, postcopy_after_passes=1000)  # 10 000 MiB/s
    try:
        await one.start(spec, epoch=1)
        with pytest.raises(SpecError, match=re.escape(f"cannot listen on {NOT_HERE}")) as refused:
            await two.prepare_incoming(spec, 2, NOT_HERE, cluster)
        assert refused.value.field == "migration_address"
        assert not [vm for vm in await two.list() if vm.state is not VMState.STOPPED]

        address = await two.prepare_incoming(spec, 2, "127.0.0.2", cluster)
        assert address.startswith("tcp:127.0.0.2:")
        rec = Migration(id="m1", vm="capped", source="n1", max_bandwidth_mib_s=CAP_MIB_S)
        seen: list[Progress] = []
        started = time.monotonic()
        moving = asyncio.create_task(
            one.migrate_out("capped", address, settings_for(rec, cluster), seen.append)
        )
        await wait_for(lambda: len(seen) >= 4 or moving.done(), 30, "two seconds of progress")
        assert not moving.done(), "at the cap, 128 MiB take more than two seconds"
        params = await one.vms.qmp(one.vms.get("capped")).execute("query-migrate-parameters")
        assert params["max-bandwidth"] == CAP_MIB_S * MIB
        assert params["max-postcopy-bandwidth"] == CAP_MIB_S * MIB
        elapsed = time.monotonic() - started
        sent = seen[-1].bytes_transferred
        rates = [p.transfer_rate_mib_s for p in seen]
        print(f"{sent / MIB:.1f} MiB in {elapsed:.1f} s; QEMU's rates {rates}")
        # (QEMU's limiter lets one 100 ms window's worth through ahead of time, at most)
        assert 0 < sent <= CAP_MIB_S * MIB * (elapsed + 0.5)
        assert 0 < max(rates) <= CAP_MIB_S * 1.5

        await one.cancel_migration("capped")
        with pytest.raises(MigrationFailed):
            await asyncio.wait_for(moving, 30)
        assert (await one.status("capped")).state is VMState.RUNNING
    finally:
        await stop_all(one, two)
