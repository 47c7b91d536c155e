"""The command-line options of an agent's settings (keys of its ``agent.toml``), declared
once: ``hvc agent`` lays them over its config file, ``hvc host install`` writes them into a
new one. Each is ``None`` when not given (the file's value, else the default, applies)."""

from __future__ import annotations

import typer

NODE = typer.Option(None, help="This node's name (needed unless its agent.toml has one).")
ETCD = typer.Option(None, help="etcd endpoints, comma-separated.")
CLUSTER = typer.Option(None, help="Cluster name (etcd prefix /hvc/<name>/).")
ADDRESS = typer.Option(None, help="Address other nodes reach this one at.")
API_PORT = typer.Option(None, help="Port of this agent's API (8440).")
RUN_DIR = typer.Option(None, help="Runtime dir: VM dirs, the watchdog's socket (/run/hvc).")
DRIVER = typer.Option(None, help="The hypervisor driver: qemu (default) or sim.")


def endpoints(etcd: str | None) -> tuple[str, ...] | None:
    """``--etcd``'s comma-separated endpoints (blanks dropped); None when not given."""
    if not etcd:
        return None
    return tuple(e.strip() for e in etcd.split(",") if e.strip())
