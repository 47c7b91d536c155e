"""The daemon commands of ``hvc``: ``hvc watchdog`` (and ``hvc agent``)."""

from __future__ import annotations

from pathlib import Path

import typer

from hvcluster.agent.watchdog import Watchdog


def watchdog(
    run_dir: Path = typer.Option(..., help="The node's run dir (VM pidfiles under vms/)."),
    fence_after: float = typer.Option(3.0, min=0.1, help="Seconds unfed before killing VMs."),
    hardware: str | None = typer.Option(None, help="Also feed this device, e.g. /dev/watchdog."),
) -> None:
    """Run the node watchdog: kill every VM of this node when the agent stops feeding it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    Watchdog(run_dir, fence_after, hardware).serve()


def register(app: typer.Typer) -> None:
    app.command("watchdog")(watchdog)
