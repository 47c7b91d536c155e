"""Each QEMU in a systemd scope of its own, when systemd runs the host.

Under systemd every process the agent starts lands in the agent's unit's control group,
QEMU included (``-daemonize`` leaves the session, not the cgroup). The unit's
``KillMode=process`` keeps a stop or restart of the agent from killing the VMs, but they stay
counted as the agent's (memory, CPU, "left processes behind" on every stop), and a unit
changed to the default kill mode, or a ``systemctl kill hvc-agent``, would take them all down.
So with systemd as PID 1 each QEMU starts through ``systemd-run --scope``: a transient scope
unit of its own (``hvc-vm-<vm>-<random>.scope`` in ``machine.slice``, the slice libvirt puts
VMs in too), which nothing done to the agent's unit touches; ``--collect`` removes the unit
once QEMU exits, however it exits. The watchdog still kills QEMU by its pid (the pidfile), so
fencing is the same either way.

Without systemd as PID 1 (containers, this project's CI, the lab on a machine without it)
QEMU starts as before, from the agent. ``QemuSettings.scope``: ``auto`` (a scope when systemd
runs the host and ``systemd-run`` is there), ``systemd`` (always; QEMU fails to start, saying
why, where it cannot), ``none`` (never).
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Literal

ScopeMode = Literal["auto", "systemd", "none"]
# sd_booted(3): this directory exists exactly when systemd is the running init.
SYSTEMD_RUNTIME = Path("/run/systemd/system")
SLICE = "machine.slice"


def systemd_booted(runtime: Path = SYSTEMD_RUNTIME) -> bool:
    return runtime.is_dir()


def systemd_run(mode: ScopeMode, runtime: Path = SYSTEMD_RUNTIME) -> str | None:
    """The ``systemd-run`` to start QEMU through, or None: QEMU starts from the agent."""
    if mode == "none":
        return None
    found = shutil.which("systemd-run")
    if mode == "systemd":
        return found or "systemd-run"  # not found: the launch fails and says so
    return found if systemd_booted(runtime) else None


def scope_unit(vm: str) -> str:
    """A fresh unit name (a VM started again here gets a new one: the old scope may not
    be collected yet). VM names are DNS labels, valid in a unit name as they are."""
    return f"hvc-vm-{vm}-{secrets.token_hex(3)}.scope"


def scoped(argv: list[str], vm: str, runner: str) -> list[str]:
    """``argv`` started in a scope of its own (see the module's docstring)."""
    return [
        runner,
        "--scope",
        "--quiet",
        "--collect",
        f"--unit={scope_unit(vm)}",
        f"--slice={SLICE}",
        f"--description=hvcluster VM {vm}",
        "--",
        *argv,
    ]
