"""``hvc vm checkpoint``: create, list, revert to and remove a VM's checkpoints (qcow2
internal snapshots, with the guest's memory when it runs; see docs/architecture.md).

Each change is an operation the VM's node carries out; the command waits for its end
(``--no-wait``: it prints the requested operation) and exits non-zero if it failed."""

from __future__ import annotations

import time
from typing import Any

import typer

from hvcluster.cli.client import Client, api_option
from hvcluster.cli.output import console, err_console, friendly_errors, print_json, print_table
from hvcluster.cli.views import asking, json_option

app = typer.Typer(
    help="Checkpoints of a VM (its disks, and its memory when it runs).", no_args_is_help=True
)

POLL_S = 0.2


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n else "-"


def _describe(op: dict[str, Any]) -> str:
    text = f"checkpoint {op['action']} {op['name']!r} of {op['vm']} on {op['node']}: {op['state']}"
    return text + (f": {op['reason']}" if op.get("reason") else "")


def _change(
    api: list[str] | None,
    method: str,
    path: str,
    body: Any,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    with Client.from_options(api) as client:
        op: dict[str, Any] = client.request(method, path, json_body=body)
        end = time.monotonic() + timeout
        while wait and op["state"] in ("requested", "preparing"):
            if time.monotonic() > end:
                err_console.print(f"[bold red]error:[/] gave up waiting: {_describe(op)}")
                raise typer.Exit(1)
            time.sleep(POLL_S)
            op = client.get(f"/checkpoint-ops/{op['id']}")
    if as_json:
        print_json(op)
    else:
        console.print(_describe(op), highlight=False)
    if op["state"] == "failed":
        raise typer.Exit(1)


def _command(verb: str, method: str, path: str, help: str, body: bool = False) -> None:
    """Register ``verb VM NAME``: ``method path`` (``{vm}``, ``{name}`` filled in; with the
    name in the body if ``body``), then wait for the operation's end."""

    @app.command(verb, help=help)
    @friendly_errors
    def command(
        vm: str = typer.Argument(..., help="VM name."),
        name: str = typer.Argument(..., help="Checkpoint name."),
        wait: bool = typer.Option(
            True, "--wait/--no-wait", help="Wait for its end (non-zero if it fails)."
        ),
        timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait at most."),
        as_json: bool = json_option(),
        api: list[str] | None = api_option(),
    ) -> None:
        where = path.format(vm=vm, name=name)
        _change(api, method, where, {"name": name} if body else None, wait, timeout, as_json)


_command(
    "create",
    "POST",
    "/vms/{vm}/checkpoints",
    "Checkpoint a VM: its disks, and its memory when it runs (the guest pauses meanwhile).",
    body=True,
)
_command(
    "revert",
    "POST",
    "/vms/{vm}/checkpoints/{name}/revert",
    "Bring a VM back to a checkpoint (a running VM goes on from its saved memory).",
)
_command("rm", "DELETE", "/vms/{vm}/checkpoints/{name}", "Remove a checkpoint from a VM's disks.")


@asking(app, "list", "VM", "/vms/{name}/checkpoints")
def list_checkpoints(vm: str, found: dict[str, Any]) -> None:
    """A VM's checkpoints: name, when taken, the size of the saved memory, with memory."""
    rows = [
        (c["name"], _when(c["created"]), _size(c["size"]), "yes" if c["memory"] else "no")
        for c in found["checkpoints"]
    ]
    print_table(f"Checkpoints of {vm}", ["NAME", "CREATED", "SIZE", "MEMORY"], rows)
