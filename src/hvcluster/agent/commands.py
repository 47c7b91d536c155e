"""The daemon commands of ``hvc``: ``hvc watchdog`` (and ``hvc agent``)."""

from __future__ import annotations

from pathlib import Path

import typer

from hvcluster.agent import options
from hvcluster.watchdog.node import Watchdog


def watchdog(
    run_dir: Path = typer.Option(..., help="The node's run dir (VM pidfiles under vms/)."),
    fence_after: float = typer.Option(3.0, min=0.1, help="Seconds unfed before killing VMs."),
    hardware: str | None = typer.Option(None, help="Also feed this device, e.g. /dev/watchdog."),
) -> None:
    """Run the node watchdog: kill every VM of this node when the agent stops feeding it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    Watchdog(run_dir, fence_after, hardware).serve()


def agent(
    config: Path | None = typer.Option(None, "--config", "-c", help="Agent TOML config file."),
    node: str | None = options.NODE,
    etcd: str | None = options.ETCD,
    cluster: str | None = options.CLUSTER,
    address: str | None = options.ADDRESS,
    api_port: int | None = options.API_PORT,
    run_dir: Path | None = options.RUN_DIR,
    driver: str | None = options.DRIVER,
) -> None:
    """Run this host's agent: node agent, controller candidate and API."""
    from hvcluster.agent.config import load_config
    from hvcluster.agent.start import run
    from hvcluster.models.errors import HvcError

    overrides = {
        "node": node,
        "cluster": cluster,
        "address": address,
        "api_port": api_port,
        "run_dir": run_dir,
        "driver": driver,
        "etcd": options.endpoints(etcd),
    }
    try:
        cfg = load_config(config, overrides)
    except HvcError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    run(cfg)


def register(app: typer.Typer) -> None:
    app.command("watchdog")(watchdog)
    app.command("agent")(agent)
