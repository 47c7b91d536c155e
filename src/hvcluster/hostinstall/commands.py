"""``hvc host install`` and ``hvc host uninstall``: run as root on the host itself, from the
virtualenv ``scripts/host-install`` made (they talk to no API and no store)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from hvcluster.agent import options
from hvcluster.hostinstall import apply
from hvcluster.hostinstall.plan import ETC, PREFIX, UNIT_DIR, HostPlan
from hvcluster.models.errors import HvcError

app = typer.Typer(
    help="Install hvcluster's config and systemd units on this host (root; Debian 12).",
    no_args_is_help=True,
)


def _say(message: str) -> None:
    typer.echo(f"[host] {message}")


def _fail(e: HvcError) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


@app.command()
def install(
    node: str | None = options.NODE,
    etcd: str | None = options.ETCD,
    cluster: str | None = options.CLUSTER,
    address: str | None = options.ADDRESS,
    api_host: str | None = typer.Option(None, help="Address the API listens on (0.0.0.0: all)."),
    migration_address: str | None = typer.Option(
        None, help="This host's address on a separate migration network (default: --address)."
    ),
    api_port: int | None = options.API_PORT,
    driver: str | None = options.DRIVER,
    run_dir: Path | None = options.RUN_DIR,
    cache_dir: Path | None = typer.Option(None, help="Images, downloads."),
    etcd_ca: Path | None = typer.Option(None, help="CA of etcd's certificates (TLS to etcd)."),
    etcd_cert: Path | None = typer.Option(None, help="This agent's client certificate for etcd."),
    etcd_key: Path | None = typer.Option(None, help="Its key."),
    etcd_crl: Path | None = typer.Option(
        None, help="The etcd member's CRL this agent keeps up to date (hvc node join's)."
    ),
    api_cert: Path | None = typer.Option(None, help="The API's certificate (https)."),
    api_key: Path | None = typer.Option(None, help="Its key."),
    api_ca: Path | None = typer.Option(None, help="CA the other agents' APIs are checked with."),
    fence_after: float = typer.Option(3.0, min=0.1, help="The watchdog's grace at its start."),
    hardware_watchdog: str | None = typer.Option(
        None, help="Also feed this device (/dev/watchdog): a hung kernel then reboots the host."
    ),
    softdog: bool = typer.Option(False, help="Load softdog for /dev/watchdog (no hardware one)."),
    etcd_member: bool = typer.Option(False, help="This host runs an etcd member (hvc-etcd)."),
    etcd_initial_cluster: str | None = typer.Option(
        None, help="NAME=PEER-URL,... of every member (default: this host alone)."
    ),
    etcd_existing: bool = typer.Option(False, help="Join a running etcd cluster, not found one."),
    prefix: Path = typer.Option(PREFIX, help="The virtualenv the units run."),
    etc: Path = typer.Option(ETC, help="Where agent.toml (and etcd.flags) live."),
    unit_dir: Path = typer.Option(UNIT_DIR, help="Where the units go."),
    packages: bool = typer.Option(True, help="Install the Debian packages a host needs."),
    enable: bool = typer.Option(True, help="Enable the units (systemctl enable)."),
    start: bool = typer.Option(False, help="Start the units now (where systemd runs)."),
    force: bool = typer.Option(False, help="Rewrite an existing agent.toml / etcd.flags."),
) -> None:
    """Write /etc/hvcluster/agent.toml (never over an existing one without --force), the
    units hvc-watchdog, hvc-agent (and hvc-etcd), install the host's Debian packages and
    enable the units. Safe to run again."""
    agent: dict[str, Any] = {
        "node": node,
        "cluster": cluster,
        "etcd": options.endpoints(etcd),
        "address": address,
        "api_host": api_host,
        "migration_address": migration_address,
        "api_port": api_port,
        "driver": driver,
        "run_dir": run_dir,
        "cache_dir": cache_dir,
        "etcd_ca": etcd_ca,
        "etcd_cert": etcd_cert,
        "etcd_key": etcd_key,
        "etcd_crl": etcd_crl,
        "api_cert": api_cert,
        "api_key": api_key,
        "api_ca": api_ca,
    }
    plan = HostPlan(
        agent={k: v for k, v in agent.items() if v is not None},
        prefix=prefix,
        etc=etc,
        unit_dir=unit_dir,
        fence_after_s=fence_after,
        hardware_watchdog=hardware_watchdog,
        softdog=softdog,
        etcd_member=etcd_member,
        etcd_initial_cluster=etcd_initial_cluster,
        etcd_existing=etcd_existing,
    )
    try:
        apply.install(plan, _say, force=force, packages=packages, enable_units=enable, start=start)
    except HvcError as e:
        _fail(e)


@app.command()
def uninstall(
    prefix: Path = typer.Option(PREFIX, help="The virtualenv to remove."),
    unit_dir: Path = typer.Option(UNIT_DIR, help="Where the units are."),
    run_dir: Path = typer.Option(Path("/run/hvc"), help="Runtime dir (VMs running here?)."),
    force: bool = typer.Option(False, help="Even while VMs run on this host."),
) -> None:
    """Stop and remove the units and the virtualenv. Keeps /etc/hvcluster (config and
    certificates), the etcd data, the Debian packages and every VM's disk."""
    plan = HostPlan(agent={"run_dir": run_dir}, prefix=prefix, unit_dir=unit_dir)
    try:
        apply.uninstall(plan, _say, force=force)
    except HvcError as e:
        _fail(e)
