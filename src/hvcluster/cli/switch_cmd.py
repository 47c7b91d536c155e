"""``hvc switch``: virtual switches, a Linux bridge on every node (through the API)."""

from __future__ import annotations

from typing import Any

import typer

from hvcluster.cli.client import api_option
from hvcluster.cli.output import console, friendly_errors, print_table
from hvcluster.cli.views import answer, json_option, listing, removing
from hvcluster.cli.vm_cmd import warn_skipped
from hvcluster.models.storage import SwitchType

app = typer.Typer(help="Virtual switches: add, list, remove.", no_args_is_help=True)


@app.command("add")
@friendly_errors
def add(
    name: str = typer.Argument(..., help="Switch name."),
    type_: SwitchType = typer.Option(
        SwitchType.PRIVATE,
        "--type",
        help="external: bridged to an uplink NIC; internal: VMs and host; private: VMs only.",
    ),
    uplink: str | None = typer.Option(
        None, "--uplink", help="External switches: the host NIC to bridge in (where present)."
    ),
    as_json: bool = json_option(),
    api: list[str] | None = api_option(),
) -> None:
    """Add a switch. Each agent creates its bridge and reports it."""
    body: dict[str, Any] = {"name": name, "type": type_.value}
    if uplink:
        body["uplink"] = uplink
    answer(api, lambda client: client.post("/switches", body), as_json, _added)


def _added(s: dict[str, Any]) -> None:
    console.print(
        f"switch [bold]{s['name']}[/] ({s['type']}), bridge {s['bridge']} on every node",
        highlight=False,
    )


@listing(app, "/switches")
def list_switches(answer: dict[str, Any]) -> None:
    """List switches: type, uplink, bridge, nodes that have it, problems."""
    rows = [
        (
            s["name"],
            s["type"],
            s["uplink"] or "",
            s["bridge"],
            ", ".join(s["ready_on"]),
            "; ".join(f"{n}: {why}" for n, why in sorted(s["problems"].items())),
            len(s["used_by"]),
        )
        for s in answer["switches"]
    ]
    print_table(
        "switches", ("NAME", "TYPE", "UPLINK", "BRIDGE", "READY ON", "PROBLEMS", "VMS"), rows
    )
    warn_skipped(answer)


removing(
    app,
    "/switches",
    "switch",
    "Forget a switch (bridges already made stay). Refused while a VM has a NIC on it.",
)
