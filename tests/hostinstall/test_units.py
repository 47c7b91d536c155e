"""The systemd units as systemd itself reads them (``systemd-analyze verify``), and the
settings the VMs' survival depends on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hvcluster.host import etcd_unit
from hvcluster.hostinstall.plan import HostPlan
from hvcluster.hostinstall.units import AGENT_UNIT, ETCD_UNIT, WATCHDOG_UNIT, units

# The units' ExecStart must name executables that exist for verify: this test's virtualenv.
PREFIX = Path(sys.prefix)
needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def plan(**kwargs: object) -> HostPlan:
    return HostPlan(**{"agent": {"node": "hv1"}, "prefix": PREFIX, **kwargs})  # type: ignore[arg-type]


def verify(tmp_path: Path, rendered: dict[str, str]) -> str:
    """Everything systemd-analyze says about the units (it exits 0 on some bad lines, e.g.
    an unknown KillMode, and only says so): empty when they are right."""
    for name, text in rendered.items():
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / n) for n in rendered)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return (done.stdout + done.stderr + ("" if done.returncode == 0 else " (failed)")).strip()


@needs_systemd
@pytest.mark.parametrize(
    "options",
    [{}, {"etcd_member": True, "softdog": True, "hardware_watchdog": "/dev/watchdog"}],
    ids=["plain", "etcd-member-softdog"],
)
def test_units_pass_systemd_analyze_verify(tmp_path: Path, options: dict[str, object]) -> None:
    assert verify(tmp_path, units(plan(**options))) == ""


@needs_systemd
def test_verify_catches_a_bad_unit(tmp_path: Path) -> None:
    rendered = units(plan())
    rendered[AGENT_UNIT] = rendered[AGENT_UNIT].replace("KillMode=process", "KillMode=sometimes")
    assert "kill mode" in verify(tmp_path, rendered)
    rendered = units(plan(prefix=tmp_path / "no-venv"))
    assert "not executable" in verify(tmp_path, rendered)


def lines(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines()}


def test_agent_restart_leaves_the_vms_running_and_needs_the_watchdog() -> None:
    agent = lines(units(plan())[AGENT_UNIT])
    assert "KillMode=process" in agent  # QEMU stays in this cgroup: never killed with it
    assert "OOMPolicy=continue" in agent  # a guest's OOM kill does not stop the agent
    assert "TasksMax=infinity" in agent  # the guests' threads count here
    assert f"Requires={WATCHDOG_UNIT}" in agent
    assert any(line.startswith(f"After={WATCHDOG_UNIT}") for line in agent)
    assert (
        f"ExecStart={PREFIX}/bin/python -m hvcluster.agent --config /etc/hvcluster/agent.toml"
        in agent
    )
    assert not any(line.startswith(("MemoryMax", "RuntimeDirectory")) for line in agent)


def test_watchdog_options() -> None:
    plain = units(plan())[WATCHDOG_UNIT]
    assert "--hardware" not in plain
    assert "modprobe softdog" not in plain
    armed = units(plan(hardware_watchdog="/dev/watchdog", softdog=True))[WATCHDOG_UNIT]
    assert "--run-dir /run/hvc --fence-after 3.0 --hardware /dev/watchdog" in armed
    assert "ExecStartPre=-/sbin/modprobe softdog" in armed


def test_etcd_unit_only_for_members() -> None:
    assert ETCD_UNIT not in units(plan())
    member = units(plan(etcd_member=True))
    assert 'grep -v "^#" /etc/hvcluster/etcd.flags)' in member[ETCD_UNIT]
    assert "StateDirectory=hvcluster/etcd" in member[ETCD_UNIT]  # /var/lib/hvcluster/etcd
    assert f"Wants={ETCD_UNIT}" in member[AGENT_UNIT]


def test_init_and_join_start_the_installed_etcd_unit_only_when_it_runs_their_flags(
    tmp_path: Path,
) -> None:
    """``hvc cluster init`` and ``hvc node join`` start hvc-etcd instead of an etcd of
    their own when the unit reads the flags file they write and systemd runs here."""
    member = plan(etcd_member=True)
    unit_dir, systemd = tmp_path / "units", tmp_path / "run-systemd"
    unit_dir.mkdir()
    assert not etcd_unit.usable(member.etcd_flags_path, unit_dir, systemd)  # not installed
    for name, text in units(member).items():
        (unit_dir / name).write_text(text)
    assert not etcd_unit.usable(member.etcd_flags_path, unit_dir, systemd)  # no systemd
    systemd.mkdir()
    assert etcd_unit.usable(member.etcd_flags_path, unit_dir, systemd)
    assert not etcd_unit.usable(tmp_path / "etc" / "etcd.flags", unit_dir, systemd)
