"""A host's etcd member under systemd: ``hvc-etcd.service``, which ``hvc host install
--etcd-member`` installs (hostinstall/units.py) and which runs etcd from one flags file.
``hvc cluster init`` and ``hvc node join`` write that file; where the unit is installed,
reads that very file and systemd runs, they start the unit instead of a detached etcd of
their own, so the member is systemd's from the start (restarted, started at boot, in the
journal) and nothing has to be killed and handed over by hand.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from hvcluster.models.errors import HvcError

ETCD_UNIT = "hvc-etcd.service"
UNIT_DIR = Path("/etc/systemd/system")
SYSTEMD_RUNNING = Path("/run/systemd/system")  # present while systemd is PID 1
TIMEOUT_S = 60.0


class UnitError(HvcError):
    """systemctl could not start the etcd unit (the message has its words)."""


def usable(flags: Path, unit_dir: Path = UNIT_DIR, systemd: Path = SYSTEMD_RUNNING) -> bool:
    """Whether ``hvc-etcd.service`` is installed, runs etcd from ``flags`` (not another
    file: then it is not this command's member) and systemd runs here to start it."""
    try:
        text = (unit_dir / ETCD_UNIT).read_text()
    except OSError:
        return False
    return str(flags) in text and systemd.is_dir()


def start() -> None:
    """Enable and start the unit (a member started here should come back at boot)."""
    argv = ["systemctl", "enable", "--now", ETCD_UNIT]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UnitError(f"'{' '.join(argv)}' could not run: {e}") from e
    if done.returncode != 0:
        raise UnitError(
            f"'{' '.join(argv)}' failed: {done.stderr.strip()} (journalctl -u {ETCD_UNIT})"
        )
