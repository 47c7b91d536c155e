"""The agent's quick start (agent/start.py): liveness may start before the API, dashboard,
controller and drivers are imported, which cost a restarted agent seconds on a loaded host
(an agent back later than ``fence_after`` gets its VMs killed by its watchdog)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

# What the daemon imports after liveness started: none may be needed before.
LATE = ("uvicorn", "fastapi", "hvcluster.agent.daemon", "hvcluster.api.app", "hvcluster.cli")


def test_liveness_starts_without_the_daemons_modules() -> None:
    probe = "import sys, hvcluster.agent.start; "
    probe += f"print([m for m in sys.modules if m.startswith({LATE!r})])"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_the_quick_start_names_a_config_it_cannot_read(tmp_path: Path) -> None:
    missing = tmp_path / "agent.toml"
    out = subprocess.run(
        [sys.executable, "-m", "hvcluster.agent", "--config", str(missing)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert f"cannot read {missing}" in out.stderr
