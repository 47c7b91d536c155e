"""``hvc token``: API tokens (create, list, revoke), through the API with an admin token.

The first admin token cannot come through the API (nothing could authorise it), so
``hvc token create NAME --role admin --store-endpoints HOST:PORT`` writes it straight into
etcd, from a host that reaches etcd, as ``hvc store check`` talks to etcd. ``hvc lab up``
makes one for its lab by itself.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import typer

from hvcluster.cli.client import api_option
from hvcluster.cli.output import ExitCode, console, fail, friendly_errors, print_json, print_table
from hvcluster.cli.store_cmd import ca_option, cert_option, key_option, store_tls
from hvcluster.cli.views import json_option, listing, post, removing
from hvcluster.models.errors import InvalidInput
from hvcluster.models.names import check_name
from hvcluster.models.token import Role, Token, issue
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.etcd_conn import EtcdTls
from hvcluster.store.keys import Keys
from hvcluster.store.tokens import add_token

app = typer.Typer(help="API tokens: create, list, revoke.", no_args_is_help=True)

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(text: str) -> float:
    """``90d``, ``12h``, ``30m``, ``45s`` or plain seconds; always positive."""
    found = _DURATION.match(text.lower())
    if not found or float(found.group(1)) <= 0:
        raise InvalidInput(
            f"{text!r} is not a duration: use e.g. 90d, 12h, 30m or 3600", field="--expires"
        )
    return float(found.group(1)) * UNITS[found.group(2) or "s"]


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) if t is not None else "never"


def _shown_once(name: str, role: str, expires_at: float | None, bearer: str) -> None:
    console.print(
        f"token [bold]{name}[/] ({role}, expires {_when(expires_at)}); it is shown only now, "
        'keep it (e.g. token = "..." in ~/.config/hvc/config.toml, or HVC_TOKEN):',
        highlight=False,
    )
    print(bearer)  # alone on the last line, unwrapped, for scripts


async def _bootstrap(endpoints: str, cluster: str, token: Token, tls: EtcdTls | None) -> None:
    store = EtcdStore(endpoints, tls=tls)
    try:
        await add_token(store, Keys(cluster), token)
    finally:
        await store.close()


@app.command("create")
@friendly_errors
def create(
    name: str = typer.Argument(..., help="Token name: who or what uses it (e.g. alice, ci)."),
    role: Role = typer.Option(..., "--role", help="reader, operator or admin."),
    expires: str | None = typer.Option(
        None, "--expires", help="Lifetime: 90d, 12h, 30m, or seconds. Default: never."
    ),
    store_endpoints: str | None = typer.Option(
        None,
        "--store-endpoints",
        help="Bootstrap: write the token straight into etcd (HOST:PORT,...) instead of asking "
        "the API; for the first admin token of a cluster.",
    ),
    cluster: str = typer.Option(
        "hvc", "--cluster", help="With --store-endpoints: the cluster name (agents' 'cluster')."
    ),
    ca: Path | None = ca_option(),
    cert: Path | None = cert_option(),
    key: Path | None = key_option(),
    as_json: bool = json_option("Print JSON (with the token)."),
    api: list[str] | None = api_option(),
) -> None:
    """Create a token; its secret is printed once and stored only hashed."""
    lifetime = parse_duration(expires) if expires is not None else None
    if store_endpoints is not None:
        try:
            check_name(name)
            check_name(cluster)
        except ValueError as e:
            raise fail(str(e), ExitCode.USAGE) from None
        now = time.time()
        expires_at = now + lifetime if lifetime is not None else None
        token, bearer = issue(name, role, now, expires_at, created_by="bootstrap")
        asyncio.run(_bootstrap(store_endpoints, cluster, token, store_tls(ca, cert, key)))
        answer: dict[str, Any] = {
            "name": name,
            "role": role.value,
            "created_at": now,
            "expires_at": expires_at,
            "token": bearer,
        }
    else:
        body: dict[str, Any] = {"name": name, "role": role.value}
        if lifetime is not None:
            body["expires_in_s"] = lifetime
        answer = post(api, "/tokens", body)
    if as_json:
        print_json(answer)
        return
    _shown_once(answer["name"], answer["role"], answer["expires_at"], answer["token"])


@listing(app, "/tokens")
def list_tokens(answer: dict[str, Any]) -> None:
    """List tokens (never their secrets): name, role, created, expires, by whom."""
    rows = [
        (
            t["name"],
            t["role"],
            _when(t["created_at"]),
            _when(t["expires_at"]) + (" (expired)" if t["expired"] else ""),
            t["created_by"],
        )
        for t in answer["tokens"]
    ]
    print_table("tokens", ("NAME", "ROLE", "CREATED", "EXPIRES", "CREATED BY"), rows)


removing(
    app,
    "/tokens",
    "token",
    "Revoke a token: refused from the next request on. The last admin token stays.",
    verb="revoke",
    done="revoked",
)
