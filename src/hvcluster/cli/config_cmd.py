"""``hvc cluster config show|set``: the cluster settings (timings, migration, quarantine,
retention, fence command), through ``/cluster/config``."""

from __future__ import annotations

from typing import Any

import typer

from hvcluster.cli.client import UsageError, api_option
from hvcluster.cli.output import console, friendly_errors, print_table
from hvcluster.cli.views import (
    answer,
    json_option,
    patch_settings,
    print_changes,
    reason_option,
    revision_option,
)
from hvcluster.models.config import ClusterConfig, settable_keys
from hvcluster.models.settings import dotted_fields, typed_value

app = typer.Typer(help="Show and change the cluster settings.", no_args_is_help=True)

_FIELDS = dict(dotted_fields(ClusterConfig))


def parse_setting(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` as the API takes it (:func:`~hvcluster.models.settings.typed_value`)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"{item!r}: give KEY=VALUE (e.g. migration.downtime_limit_ms=500)")
    if key not in settable_keys():
        raise UsageError(
            f"{key}: not a cluster setting that can be changed; settable: "
            + ", ".join(sorted(settable_keys()))
        )
    return key, typed_value(_FIELDS[key], text)


def _rows(config: dict[str, Any], restart: set[str]) -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    for key, _ in dotted_fields(ClusterConfig):
        value: Any = config
        for part in key.split("."):
            value = value[part]
        if isinstance(value, list):
            value = ",".join(value) or "(none)"
        rows.append((key + (" *" if key in restart else ""), value))
    return rows


@app.command("show")
@friendly_errors
def show(as_json: bool = json_option(), api: list[str] | None = api_option()) -> None:
    """Show the cluster settings, the revision to name with 'set --revision', and which
    settings an agent reads only when it starts (marked *)."""
    answer(api, lambda client: client.get("/cluster/config"), as_json, _show)


def _show(found: dict[str, Any]) -> None:
    stored = "stored" if found["stored"] else "defaults, none stored"
    profile = f", timing profile {found['profile']}" if found["profile"] else ""
    print_table(
        f"cluster config (revision {found['revision']}: {stored}{profile})",
        ("SETTING", "VALUE"),
        _rows(found["config"], set(found["restart_needed"])),
    )
    console.print("* read by each agent when it starts: a change needs an agent restart")


@app.command("set")
@friendly_errors
def set_(
    settings: list[str] = typer.Argument(
        ..., help="KEY=VALUE, dotted for nested ones (migration.downtime_limit_ms=500)."
    ),
    revision: int | None = revision_option("config ('config show' says its revision)"),
    reason: str = reason_option(),
    as_json: bool = json_option(),
    api: list[str] | None = api_option(),
) -> None:
    """Change cluster settings (admin). The whole config is checked before anything is
    stored: a refusal names the setting and why (exit code 2). Every change is an event
    saying who changed what from what to what."""
    parsed = dict(parse_setting(s) for s in settings)
    patch_settings(api, "/cluster/config", parsed, revision, reason, as_json, _changed)


def _changed(done: dict[str, Any]) -> None:
    if not done["changes"]:
        console.print(f"nothing changed (revision {done['revision']})", highlight=False)
        return
    print_changes(done["changes"], "agents use it once restarted")
    console.print(f"cluster config at revision {done['revision']}", highlight=False)
    if any(c["restart_needed"] for c in done["changes"]):
        console.print(
            "restart each agent (one at a time) for its lease and watchdog to use the new "
            "timings; until then the controller waits as long as the old ones need",
            highlight=False,
        )
