"""``hvc events``: the cluster log, and ``--follow`` to watch it live."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import typer

from hvcluster.cli.client import ApiError, Client, api_option
from hvcluster.cli.output import console, friendly_errors
from hvcluster.cli.vm_cmd import warn_skipped


def _time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


def _line(item: dict[str, Any]) -> str:
    e = item["event"]
    subject = f" {e['subject']}" if e["subject"] else ""
    return f"{_time(e['time'])} {e['kind']}{subject} [{e['actor']}] {e['reason']}"


def _emit(item: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(item, sort_keys=True) + "\n")
        sys.stdout.flush()
    else:
        console.print(_line(item), highlight=False, markup=False, soft_wrap=True)


@friendly_errors
def events(
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="How many of the latest."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events."),
    count: int | None = typer.Option(
        None, "--count", min=1, help="With --follow: stop after this many new events."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="One JSON object per line (the list too, with --follow)."
    ),
    api: list[str] | None = api_option(),
) -> None:
    """Show the cluster log: what happened, to what, why, and who did it."""
    with Client.from_options(api) as client:
        answer = client.get("/events", limit=limit)
        if as_json and not follow:
            sys.stdout.write(json.dumps(answer, indent=2, sort_keys=True) + "\n")
            return
        # One line per event (time, kind, subject, actor, reason), as a log reads.
        for item in answer["events"]:
            _emit(item, as_json)
        warn_skipped(answer)
        if not follow:
            return
        # From the revision read before the listing, skipping what the listing showed:
        # nothing is missed and nothing printed twice.
        last = answer["events"][-1]["seq"] if answer["events"] else 0
        stream = client.follow(
            "/events/follow", since=answer["revision"] + 1, after=last, count=count
        )
        for kind, data in stream:
            if kind == "error":
                raise ApiError(str(data.get("error", data)))
            if kind == "event":
                _emit(data, as_json)


def register(app: typer.Typer) -> None:
    app.command("events")(events)
