"""``hvc cluster balance`` and ``hvc cluster capacity``.

``balance`` shows the controller's plan as a table (VM, from, to, wave, reason) and, once
confirmed (``--yes`` skips the question; ``--dry-run`` never applies), asks the controller to
carry it out: it starts the first wave and plans again as each ends.
"""

from __future__ import annotations

from typing import Any

import typer

from hvcluster.cli.client import Client, api_option
from hvcluster.cli.output import console, friendly_errors, print_json, print_table
from hvcluster.cli.views import answer, json_option


def _show(plan: dict[str, Any]) -> None:
    rows = [(m["vm"], m["source"], m["target"], m["wave"], m["reason"]) for m in plan["moves"]]
    if rows:
        print_table("balance plan", ("VM", "FROM", "TO", "WAVE", "REASON"), rows)
    console.print(plan["reason"], highlight=False)
    for sentence in plan["unresolved"]:
        console.print(f"[yellow]{sentence}[/]", highlight=False)


@friendly_errors
def balance(
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan only."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Apply without asking."),
    as_json: bool = json_option("Print the plan as JSON."),
    api: list[str] | None = api_option(),
) -> None:
    """Balance the load: move VMs live off nodes above the balance level, with the fewest
    migrations; the plan is shown first."""
    with Client.from_options(api, timeout=30.0) as client:
        plan = client.post("/cluster/balance", {"apply": False})
        if as_json and (dry_run or not plan["moves"]):
            print_json(plan)
            return
        if not as_json:
            _show(plan)
        if dry_run or not plan["moves"]:
            return
        if not yes and not typer.confirm(f"Apply these {len(plan['moves'])} move(s)?"):
            raise typer.Exit(1)
        done = client.post("/cluster/balance", {"apply": True})
    if as_json:
        print_json(done)
    elif done["started"]:
        console.print(
            f"balancing: {len(done['moves'])} move(s) planned, the first wave started "
            "('hvc events' follows them)",
            highlight=False,
        )
    else:
        console.print(f"[yellow]not started: {done['why_not_started']}[/]", highlight=False)


@friendly_errors
def capacity(
    as_json: bool = json_option("Print it as JSON."),
    api: list[str] | None = api_option(),
) -> None:
    """How many node failures the running HA VMs survive, against the setting
    admission.node_failures_tolerated."""
    answer(api, lambda client: client.get("/cluster/capacity"), as_json, _show_capacity)


def _show_capacity(found: dict[str, Any]) -> None:
    more = "+" if found["at_least"] else ""
    console.print(
        f"{found['ha_vms']} HA VM(s) on {found['nodes']} open node(s) survive "
        f"{found['survived']}{more} node failure(s); the cluster keeps room for "
        f"{found['tolerated']} (admission.action: {found['action']})",
        highlight=False,
    )
    if found["why_not_more"]:
        console.print(f"one more: {found['why_not_more']}", highlight=False)
    if not found["meets"]:
        console.print("[bold red]below the setting[/]", highlight=False)
        raise typer.Exit(1)
