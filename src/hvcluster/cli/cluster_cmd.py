"""``hvc cluster validate``: the cluster checked by category, as a failover cluster's
validation does (through the API, which asks every agent)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from hvcluster.cli.client import Client, api_option
from hvcluster.cli.output import console, fail, friendly_errors, print_json
from hvcluster.cli.report_html import render
from hvcluster.cli.views import json_option
from hvcluster.models.validation import Category, CheckStatus, ValidationReport

app = typer.Typer(
    help="The cluster as a whole: validate it, show and change its settings.", no_args_is_help=True
)

# The API asks every agent (each within a few seconds); give it time to.
VALIDATE_TIMEOUT_S = 30.0

_STYLE = {CheckStatus.PASS: "green", CheckStatus.WARN: "yellow", CheckStatus.FAIL: "bold red"}


def table(report: ValidationReport) -> Table:
    t = Table(
        title=f"cluster {report.cluster}: validation (by {report.served_by})", title_justify="left"
    )
    for column in ("STATUS", "CHECK", "RESULT", "WHAT TO DO"):
        t.add_column(column, overflow="fold")
    for category in Category:
        rows = [c for c in report.checks if c.category is category]
        if not rows:
            continue
        t.add_section()
        t.add_row(f"[bold]{category.value}[/]", "", "", "")
        for c in rows:
            status = f"[{_STYLE[c.status]}]{c.status.value}[/]"
            t.add_row(status, c.name, c.message, c.action)
    return t


def summary(report: ValidationReport) -> str:
    passed, warned, failed = (report.count(s) for s in CheckStatus)
    verdict = "[bold red]FAILED[/]" if report.failed else "[green]passed[/]"
    return (
        f"{verdict}: {passed} passed, {warned} warning(s), {failed} failed "
        f"({report.duration_ms:.0f} ms)"
    )


@app.command("validate")
@friendly_errors
def validate(
    as_json: bool = json_option("Print the report as JSON."),
    html: Path | None = typer.Option(
        None,
        "--html",
        help="Also write the report as a self-contained HTML page to FILE.",
        metavar="FILE",
    ),
    api: list[str] | None = api_option(),
) -> None:
    """Check the cluster: inventory, hypervisor, network, storage, time skew, etcd. Each
    check passes, warns or fails with what to do; the exit code is 1 if any failed."""
    with Client.from_options(api, timeout=VALIDATE_TIMEOUT_S) as client:
        answer = client.get("/cluster/validate")
    report = ValidationReport.model_validate(answer)
    if html is not None:
        try:
            html.write_text(render(report), encoding="utf-8")
        except OSError as e:
            raise fail(f"cannot write {html}: {e.strerror or e}") from None
    if as_json:
        print_json(report.model_dump(mode="json"))
    else:
        console.print(table(report))
        console.print(summary(report), highlight=False)
        if html is not None:
            console.print(f"report written to {html}", highlight=False)
    if report.failed:
        raise typer.Exit(1)
