"""``hvc cluster balance`` and ``hvc cluster capacity``.

``balance`` shows the controller's plan as a table (VM, from, to, wave, reason) and, once
confirmed (``--yes`` skips the question; ``--dry-run`` never applies), asks the controller to
carry it out: it starts the first wave and plans again as each ends. The command then follows
the run in the cluster's log until it ends (``--no-wait``: it returns once the run began): each
move as it starts, each migration's outcome (moved, or failed and why), the nodes left above
the level, and a summary; exit 1 if a move failed or the run did not end.
"""

from __future__ import annotations

import time
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
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="Follow the moves until the balance run ends."
    ),
    wait_s: float = typer.Option(
        900.0, "--wait-s", min=1, help="Give up following after this many seconds."
    ),
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
        latest = client.get("/events", limit=1)["events"]
        done = client.post("/cluster/balance", {"apply": True})
        if as_json:
            print_json(done)
            return
        if not done["started"]:
            console.print(f"[yellow]not started: {done['why_not_started']}[/]", highlight=False)
            raise typer.Exit(1)
        console.print(
            f"balancing: {len(done['moves'])} move(s) planned, the first wave started",
            highlight=False,
        )
        if not wait:
            console.print("('hvc events' follows them)", highlight=False)
            return
        ok = follow_run(client, latest[-1]["seq"] if latest else 0, wait_s)
    if not ok:
        raise typer.Exit(1)


POLL_S = 0.5
SETTLE_S = 5.0  # after the run's end, how long a move's own outcome may still take to log


def follow_run(client: Client, after: int, wait_s: float) -> bool:
    """Print the balance run's progress from the cluster's log (events after sequence
    ``after``) until it ends: True if it ended with every move done."""
    moving: set[str] = set()
    outcome: dict[str, bool] = {}
    ended: float | None = None
    lost = False  # the controller running it lost its leadership
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for item in client.get("/events", limit=1000)["events"]:
            if item["seq"] <= after:
                continue
            after = item["seq"]
            e = item["event"]
            kind, vm, reason = e["kind"], e["subject"].removeprefix("vm/"), e["reason"]
            if kind == "balance.move":
                moving.add(vm)
                console.print(f"moving {vm}: {reason}", highlight=False, markup=False)
            elif kind == "migration.done" and vm in moving and vm not in outcome:
                outcome[vm] = True
                console.print(f"[green]moved[/] {vm}: {reason}", highlight=False)
            elif kind in FAILED and vm in moving and vm not in outcome:
                outcome[vm] = False
                console.print(f"[bold red]not moved[/] {vm}: {reason}", highlight=False)
            elif kind == "balance.unresolved":
                console.print(f"[yellow]{reason}[/]", highlight=False)
            elif kind == "balance.done":
                ended = time.monotonic()
                console.print(reason, highlight=False)
            elif kind == "controller.elected" and ended is None:
                console.print(
                    f"[bold red]the controller changed ({reason}): the balance run ended "
                    "with the old one[/]",
                    highlight=False,
                )
                ended, lost = time.monotonic(), True
        if ended is not None and (moving <= outcome.keys() or time.monotonic() > ended + SETTLE_S):
            break
        time.sleep(POLL_S)
    else:
        console.print(
            f"[yellow]still balancing after {wait_s:g} s: 'hvc events' follows it[/]",
            highlight=False,
        )
        return False
    failed = sorted(vm for vm, ok in outcome.items() if not ok)
    unknown = sorted(moving - outcome.keys())
    summary = f"{len(outcome) - len(failed)} of {len(moving)} VM(s) moved"
    if failed:
        summary += f"; not moved: {', '.join(failed)}"
    if unknown:
        summary += f"; no outcome yet: {', '.join(unknown)} ('hvc migration list')"
    console.print(summary, highlight=False)
    return not failed and not unknown and not lost


FAILED = ("migration.failed", "migration.cancelled", "migration.error")


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
