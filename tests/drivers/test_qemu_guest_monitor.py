"""Guest monitoring under the qemu driver (models/vm.GuestMonitor): a real test guest that
panics (through pvpanic) or stops answering its heartbeat (guest-sync on the virtio-serial
channel) is killed and reported failed with the cause; the agent's restart and the
controller's move are the crash path's (tests/sim/test_guest_monitor.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hvcluster.drivers.base import VMInfo
from hvcluster.drivers.qemu.cmdline import Launch, qemu_argv
from hvcluster.drivers.qemu.driver import QemuDriver
from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.drivers.runtime import vm_dir
from hvcluster.guestimage.image import GuestImage
from hvcluster.guestimage.testguest import booted, guest_spec
from hvcluster.models.console import ConsoleKind
from hvcluster.models.lifecycle import VMState
from hvcluster.models.vm import GuestMonitor, VMSpec
from tests.waiting import wait_for

BOOT_S = 120.0  # TCG on a loaded CI host: a minute seen


def test_the_monitoring_devices_are_on_the_command_line_only_when_asked(tmp_path: Path) -> None:
    plain = VMSpec(name="g1")
    watched = plain.model_copy(update={"monitor": GuestMonitor(panic=True, heartbeat_timeout_s=5)})
    settings = QemuSettings()

    def argv(spec: VMSpec) -> str:
        return " ".join(qemu_argv(spec, tmp_path, tmp_path, Launch("tcg"), settings))

    assert "pvpanic" not in argv(plain) and "virtserialport" not in argv(plain)
    line = argv(watched)
    assert "-device pvpanic" in line
    assert "name=org.qemu.guest_agent.0" in line and "guest-agent.sock" in line


async def _type(driver: QemuDriver, name: str, command: str, marker: str) -> None:
    """Type ``command`` on the serial shell until ``marker`` shows in serial.log (what is
    typed before the shell opened the port is lost), or the VM's run dir is gone: the driver
    failed the VM meanwhile (a panic is caught and the VM removed before a poll may see the
    marker), and the caller checks why."""
    log = vm_dir(driver.run_dir, name) / "serial.log"

    def said() -> bool:
        try:
            text = log.read_text(errors="replace")
        except FileNotFoundError:
            return True
        return marker in text.split(command, 1)[-1]

    reader, writer = await asyncio.open_unix_connection(
        await driver.console(name, ConsoleKind.SERIAL)
    )
    try:
        for _ in range(12):
            writer.write(f"{command}\r".encode())
            await writer.drain()
            with contextlib.suppress(AssertionError):
                await wait_for(said, 5, marker)
                return
        raise AssertionError(f"the guest did not say {marker} after {command!r}")
    finally:
        writer.close()
        del reader


async def _failed(driver: QemuDriver, name: str) -> VMInfo | None:
    return next(
        (vm for vm in await driver.list() if vm.name == name and vm.state is VMState.FAILED),
        None,
    )


async def _boot(driver: QemuDriver, spec: VMSpec) -> Path:
    await driver.start(spec, epoch=1)
    log = vm_dir(driver.run_dir, spec.name) / "serial.log"
    await wait_for(lambda: booted(log), BOOT_S, "the guest to boot")
    await wait_for(
        lambda: "HVC-RESPONDER" in log.read_text(errors="replace"), 10, "the ping responder"
    )
    return log


@pytest.mark.qemu
@pytest.mark.alone
@pytest.mark.timeout(300)
async def test_a_panicking_guest_is_failed_with_its_cause(
    run_dirs: Callable[[str], Path], qemu_settings: QemuSettings, guest_image: GuestImage
) -> None:
    driver = QemuDriver(run_dirs("n1"), qemu_settings)
    spec = guest_spec("g1", guest_image).model_copy(
        update={"monitor": GuestMonitor(panic=True, heartbeat_timeout_s=10, heartbeat_grace_s=240)}
    )
    try:
        await _boot(driver, spec)
        await _type(driver, "g1", "hvc-panic", "HVC-PANIC")
        info = await wait_for(lambda: _failed(driver, "g1"), 30, "g1 failed")
        assert info.reason == "guest panicked (pvpanic)"
    finally:
        await driver.close()


@pytest.mark.qemu
@pytest.mark.alone
@pytest.mark.timeout(300)
async def test_a_hung_guest_is_failed_after_its_heartbeat_timeout(
    run_dirs: Callable[[str], Path],
    qemu_settings: QemuSettings,
    guest_image: GuestImage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hvcluster.drivers.qemu.heartbeat")
    driver = QemuDriver(run_dirs("n1"), qemu_settings)
    # A long first-answer grace, a short timeout: failing soon after the hang (and saying
    # "no heartbeat for 3s") proves the guest had answered until then.
    monitor = GuestMonitor(heartbeat_timeout_s=5, heartbeat_grace_s=240)
    spec = guest_spec("g1", guest_image).model_copy(update={"monitor": monitor})
    try:
        await _boot(driver, spec)
        await wait_for(
            lambda: "the guest answers its heartbeat" in caplog.text, 60, "a first answer"
        )
        await asyncio.sleep(10)  # twice the timeout, answering
        assert await _failed(driver, "g1") is None
        await _type(driver, "g1", "hvc-hang", "HVC-HUNG")
        hung = time.monotonic()
        info = await wait_for(lambda: _failed(driver, "g1"), 30, "g1 failed")
        took = time.monotonic() - hung
        assert info.reason == "guest not answering: no heartbeat for 5s (guest-sync)"
        assert took < 25, f"failed {took:.1f} s after the hang"
    finally:
        await driver.close()
