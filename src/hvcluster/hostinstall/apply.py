"""Doing the install: packages, files, units. Idempotent: a second run changes nothing and
says so; a config already on the host is never rewritten without ``force``.

systemctl is asked only what works where it runs: ``enable``/``mask`` work offline (in a
chroot, before the first boot), ``daemon-reload`` and ``start`` only where systemd runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from hvcluster.hostinstall.plan import HostPlan, agent_toml, etcd_flags
from hvcluster.hostinstall.units import AGENT_UNIT, ETCD_UNIT, WATCHDOG_UNIT, units
from hvcluster.models.errors import ConfigError, HvcError
from hvcluster.watchdog.node import vm_pids

Say = Callable[[str], None]
DEBIAN_ETCD_UNIT = "etcd.service"  # etcd-server's own unit: it would take port 2379


class InstallError(HvcError):
    """A step of the host install failed; the message names the step."""


def _run(argv: Sequence[str], step: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(list(argv), capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        command = " ".join(argv)
        raise InstallError(f"{step}: {command} exited {done.returncode}: " + " / ".join(tail))


def systemd_running() -> bool:
    """True where systemd is PID 1 (not in a chroot, not in a plain container)."""
    return Path("/run/systemd/system").is_dir()


def missing_packages(packages: Sequence[str]) -> list[str]:
    missing = []
    for name in packages:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True, check=False
        )
        if "install ok installed" not in done.stdout:
            missing.append(name)
    return missing


def install_packages(plan: HostPlan, say: Say) -> None:
    missing = missing_packages(plan.packages())
    if not missing:
        say("Debian packages present")
        return
    say(f"apt-get install {' '.join(missing)}")
    _run(["apt-get", "update", "-q"], "apt-get update")
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], "apt-get install")


def write_file(path: Path, text: str, mode: int, say: Say, *, keep: bool) -> None:
    """Write ``text`` unless the file already says it. ``keep``: an existing file (the
    admin's) stays as it is, and a different one is pointed out."""
    if path.exists():
        if path.read_text() == text:
            say(f"{path} unchanged")
            return
        if keep:
            say(f"{path} exists and differs: kept (--force rewrites it)")
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = path.with_name(path.name + ".hvc-new")
    fresh.write_text(text)
    fresh.chmod(mode)
    fresh.replace(path)
    say(f"{path} written")


def check_prefix(plan: HostPlan) -> None:
    hvc = plan.prefix / "bin" / "hvc"
    if not os.access(hvc, os.X_OK):
        raise InstallError(
            f"{hvc} is missing: the units run hvcluster from the virtualenv {plan.prefix}; "
            "scripts/host-install makes it, then runs this command from it"
        )


def install(
    plan: HostPlan,
    say: Say,
    *,
    force: bool,
    packages: bool = True,
    enable_units: bool = True,
    start: bool = False,
) -> None:
    check_prefix(plan)
    if packages:
        install_packages(plan, say)
    if plan.config_path.exists() and not force:
        say(f"{plan.config_path} exists: kept (--force rewrites it)")
    else:
        if "node" not in plan.agent:
            raise ConfigError(f"--node is needed: no {plan.config_path} yet", field="node")
        write_file(plan.config_path, agent_toml(plan), 0o640, say, keep=False)
    if plan.etcd_member:
        if "node" in plan.agent:
            write_file(plan.etcd_flags_path, etcd_flags(plan), 0o640, say, keep=not force)
        elif not plan.etcd_flags_path.exists():
            raise ConfigError(f"--node is needed: no {plan.etcd_flags_path} yet", field="node")
    for name, text in units(plan).items():
        write_file(plan.unit_dir / name, text, 0o644, say, keep=False)
    if plan.softdog:
        write_file(plan.softdog_conf, "softdog\n", 0o644, say, keep=False)
    if enable_units:
        enable(plan, say, start=start)


def enable(plan: HostPlan, say: Say, *, start: bool) -> None:
    names = list(units(plan))
    live = systemd_running()
    if live:
        _run(["systemctl", "daemon-reload"], "systemctl daemon-reload")
    if plan.etcd_member and shutil.which("systemctl"):
        # Debian's etcd-server starts its own member on 2379 at install: not ours.
        if live:
            stop = ["systemctl", "stop", DEBIAN_ETCD_UNIT]
            subprocess.run(stop, capture_output=True, check=False)
        _run(["systemctl", "mask", DEBIAN_ETCD_UNIT], f"systemctl mask {DEBIAN_ETCD_UNIT}")
    _run(["systemctl", "enable", *names], "systemctl enable")
    say(f"enabled {' '.join(names)}")
    if start and live:
        _run(["systemctl", "start", *names], "systemctl start")
        say(f"started {' '.join(names)}")
    elif start:
        say("systemd is not running here: the units start at the next boot")


def uninstall(plan: HostPlan, say: Say, *, force: bool) -> None:
    """Stop and remove the units and the virtualenv. Never touches /etc/hvcluster (the
    config and certificates), the etcd data dir or any VM's disk. Refuses while VMs run
    here unless ``force``: without agent and watchdog nothing would fence them, and the
    cluster would start them again elsewhere while they still run."""
    running = vm_pids(plan.run_dir)
    if running and not force:
        names = ", ".join(vm for vm, _ in running)
        raise InstallError(
            f"VMs still run on this host ({names}): drain it first (hvc node drain NODE), "
            "or --force"
        )
    present = [n for n in (WATCHDOG_UNIT, AGENT_UNIT, ETCD_UNIT) if (plan.unit_dir / n).exists()]
    if present and shutil.which("systemctl"):
        if systemd_running():
            subprocess.run(["systemctl", "stop", *present], capture_output=True, check=False)
        subprocess.run(["systemctl", "disable", *present], capture_output=True, check=False)
    for name in present:
        (plan.unit_dir / name).unlink()
        say(f"removed {plan.unit_dir / name}")
    if plan.softdog_conf.exists():
        plan.softdog_conf.unlink()
        say(f"removed {plan.softdog_conf}")
    if systemd_running():
        subprocess.run(["systemctl", "daemon-reload"], capture_output=True, check=False)
    if plan.prefix.exists():
        shutil.rmtree(plan.prefix)
        say(f"removed {plan.prefix}")
    say(
        f"kept {plan.etc} (config, certificates), the etcd data and every VM's disk; "
        "Debian packages stay installed"
    )
