"""``hvc store check``: ask every etcd member how it is (the one CLI command that talks to
the store directly, because it must work when nothing else does)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer

from hvcluster.cli.output import ExitCode, console, fail, friendly_errors, print_json, print_table
from hvcluster.cli.views import json_option
from hvcluster.store.base import StoreHealth
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.etcd_conn import EtcdTls
from hvcluster.store.health import followers_of_leader, has_quorum, quorum_size

app = typer.Typer(help="The etcd store behind the cluster.", no_args_is_help=True)


def ca_option() -> Any:
    return typer.Option(
        None,
        "--ca",
        envvar="HVC_ETCD_CA",
        help="TLS: the CA that signed etcd's certificates (https endpoints); $HVC_ETCD_CA.",
    )


def cert_option() -> Any:
    return typer.Option(
        None, "--cert", envvar="HVC_ETCD_CERT", help="TLS: this client's certificate for etcd."
    )


def key_option() -> Any:
    return typer.Option(
        None, "--key", envvar="HVC_ETCD_KEY", help="TLS: this client's key for etcd."
    )


def store_tls(ca: Path | None, cert: Path | None, key: Path | None) -> EtcdTls | None:
    """The TLS settings of a CLI command that talks to etcd directly (None: plain)."""
    if ca is None and (cert is not None or key is not None):
        raise typer.BadParameter("a client certificate needs the CA too", param_hint="--ca")
    return EtcdTls(ca, cert, key) if ca is not None else None


async def _health(endpoints: str, timeout: float, tls: EtcdTls | None) -> StoreHealth:
    store = EtcdStore(endpoints, timeout=max(timeout, 0.1), tls=tls)
    try:
        return await store.health(timeout=timeout)
    finally:
        await store.close()


def _size(n: int | None) -> str:
    if n is None:
        return ""
    return f"{n / 1024 / 1024:.1f} MiB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KiB"


def _as_dict(health: StoreHealth) -> dict[str, Any]:
    return {
        "leader": health.leader,
        "quorum": has_quorum(health),
        "members": [
            {
                "name": m.name,
                "id": f"{m.id:x}",
                "client_urls": list(m.client_urls),
                "reachable": m.reachable,
                "refused": m.refused,
                "is_leader": m.is_leader,
                "leader_id": f"{m.leader_id:x}" if m.leader_id is not None else None,
                "raft_term": m.raft_term,
                "latency_ms": m.latency_ms,
                "db_size": m.db_size,
                "error": m.error,
            }
            for m in health.members
        ],
    }


@app.command("check")
@friendly_errors
def check(
    endpoints: str = typer.Option(
        ..., "--endpoints", "-e", help="etcd client endpoints, comma-separated: 127.0.0.1:2379,..."
    ),
    as_json: bool = json_option("Print JSON instead of a table."),
    timeout: float = typer.Option(2.0, min=0.1, help="Seconds to wait for each member."),
    ca: Path | None = ca_option(),
    cert: Path | None = cert_option(),
    key: Path | None = key_option(),
) -> None:
    """Show every etcd member: reachable or not, leader, raft term, latency, db size.

    Exits 0 when a majority of the members answer and follow one leader, 2 otherwise.
    """
    tls = store_tls(ca, cert, key)
    health = asyncio.run(_health(endpoints, timeout, tls))
    if as_json:
        print_json(_as_dict(health))
    else:
        rows = [
            (
                m.name,
                f"{m.id:x}" if m.id else "",
                ", ".join(m.client_urls),
                "yes"
                if m.reachable
                else ("[red]refused[/]" if m.refused else "[red]unreachable[/]"),
                "[bold]leader[/]" if m.is_leader else ("follower" if m.leader_id else ""),
                m.raft_term,
                f"{m.latency_ms:.1f} ms" if m.latency_ms is not None else "",
                _size(m.db_size),
                m.error,
            )
            for m in health.members
        ]
        print_table(
            "etcd members",
            [
                "name",
                "id",
                "client URL",
                "reachable",
                "role",
                "term",
                "latency",
                "db size",
                "error",
            ],
            rows,
        )
    n = len(health.members)
    if not any(m.reachable for m in health.members):
        reasons = "; ".join(f"{m.name}: {m.error}" for m in health.members)
        raise fail(f"cannot reach any etcd endpoint ({reasons})", ExitCode.UNREACHABLE)
    if not has_quorum(health):
        raise fail(
            f"no quorum: {followers_of_leader(health)} of {n} members follow a leader, "
            f"{quorum_size(n)} needed",
            ExitCode.ERROR,
        )
    if not as_json:
        console.print(
            f"quorum: {followers_of_leader(health)} of {n} members follow leader {health.leader}",
            highlight=False,
        )
