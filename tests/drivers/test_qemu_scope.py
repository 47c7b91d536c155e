"""Each QEMU in a systemd scope of its own when systemd runs the host (drivers/qemu/scope.py):
the command line built, and the choice. This machine's init is not systemd (checked below),
so the tests that start QEMU run the fallback (QEMU started from the agent)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from hvcluster.drivers.qemu.scope import SYSTEMD_RUNTIME, scoped, systemd_booted, systemd_run
from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.drivers.qemu.supervision import QemuSupervisor

ARGV = ["qemu-system-x86_64", "-name", "web-1", "-daemonize"]


def test_qemu_runs_in_a_collected_scope_of_its_own_in_machine_slice() -> None:
    argv = scoped(ARGV, "web-1", "/usr/bin/systemd-run")
    sep = argv.index("--")
    assert argv[sep + 1 :] == ARGV  # QEMU's own command line, untouched, after the options
    options = argv[:sep]
    assert options[:2] == ["/usr/bin/systemd-run", "--scope"]
    assert {"--collect", "--quiet", "--slice=machine.slice"} <= set(options)
    units = [o.removeprefix("--unit=") for o in options if o.startswith("--unit=")]
    assert len(units) == 1 and re.fullmatch(r"hvc-vm-web-1-[0-9a-f]{6}\.scope", units[0])
    again = scoped(ARGV, "web-1", "/usr/bin/systemd-run")
    assert [o for o in again if o.startswith("--unit=")] != [f"--unit={units[0]}"]  # fresh


def test_auto_scopes_only_where_systemd_is_the_init(tmp_path: Path) -> None:
    if shutil.which("systemd-run") is None:
        pytest.skip("no systemd-run here")
    booted = tmp_path / "systemd-system"
    assert systemd_run("auto", booted) is None  # no /run/systemd/system: not systemd
    booted.mkdir()
    assert systemd_run("auto", booted) == shutil.which("systemd-run")
    assert systemd_run("none", booted) is None
    assert systemd_run("systemd", tmp_path / "absent") == shutil.which("systemd-run")


def test_here_qemu_starts_from_the_agent_unless_systemd_is_pid_1(tmp_path: Path) -> None:
    comm = Path("/proc/1/comm").read_text().strip()
    supervisor = QemuSupervisor(tmp_path, QemuSettings(), lambda _: None)
    if systemd_booted():
        assert comm == "systemd"
        assert supervisor.systemd_run is not None
    else:
        assert not SYSTEMD_RUNTIME.exists()  # (this project's CI: PID 1 is not systemd)
        assert supervisor.systemd_run is None
    assert QemuSupervisor(tmp_path, QemuSettings(scope="none"), lambda _: None).systemd_run is None
