"""The daemon commands of ``hvc``: ``hvc watchdog`` (and ``hvc agent``)."""

from __future__ import annotations

from pathlib import Path

import typer

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
    node: str | None = typer.Option(None, help="This node's name."),
    etcd: str | None = typer.Option(None, help="etcd endpoints, comma-separated."),
    cluster: str | None = typer.Option(None, help="Cluster name (etcd prefix /hvc/<name>/)."),
    address: str | None = typer.Option(None, help="Address other nodes reach this one at."),
    api_port: int | None = typer.Option(None, help="Port of this agent's API."),
    run_dir: Path | None = typer.Option(None, help="Runtime dir (VM dirs, watchdog socket)."),
    driver: str | None = typer.Option(None, help="qemu or sim."),
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
        "etcd": tuple(e.strip() for e in etcd.split(",") if e.strip()) if etcd else None,
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
