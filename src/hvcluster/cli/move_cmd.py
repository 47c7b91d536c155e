"""``hvc vm move`` and ``hvc migration``: move a running VM, follow it with a progress bar."""

from __future__ import annotations

import re
import time
from typing import Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from hvcluster.cli.client import ApiError, Client, api_option
from hvcluster.cli.output import (
    ExitCode,
    console,
    err_console,
    friendly_errors,
    print_json,
    print_table,
)
from hvcluster.cli.views import answer, json_option, listing
from hvcluster.models.config import COUNT_MAX

app = typer.Typer(
    help="List, show and cancel migrations (storage moves too: one id names either).",
    no_args_is_help=True,
)

POLL_S = 0.2
FINAL = ("done", "failed", "cancelled")


def describe(m: dict[str, Any]) -> str:
    route = f"{m['source']} -> {m['target'] or '?'}"
    if m["kind"] == "live" and m.get("volume"):
        route += f", disks to volume {m['volume']}"
    if m.get("max_bandwidth_mib_s"):
        route += f", capped at {m['max_bandwidth_mib_s']} MiB/s"
    if m["kind"] == "storage":
        route = f"on {m['source']} to volume {m.get('volume', '?')}"
    text = f"migration {m['id']} of {m['vm']} ({m['kind']}, {route}): {m['state']}"
    if m["state"] == "done" and m.get("downtime_ms") is not None:
        text += f", downtime {m['downtime_ms']:.0f} ms, total {m['total_ms']:.0f} ms"
        if m.get("transfer_downtime_ms") is not None:
            text += f" (transfer downtime {m['transfer_downtime_ms']:.0f} ms)"
    if m["reason"]:
        text += f": {m['reason']}"
    return text


def follow(
    client: Client, mid: str, timeout: float, records: str = "/migrations"
) -> dict[str, Any]:
    """Poll the record until it is final (done: until its times are known); show a bar."""
    end = time.monotonic() + timeout
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("requested", total=None)
        while True:
            m: dict[str, Any] = client.get(f"{records}/{mid}")
            p = m["progress"]
            total = p["bytes_total"] or None
            said = m["state"] + load_said(p)
            bar.update(task, description=said, total=total, completed=p["bytes_transferred"])
            timed = m["state"] != "done" or m.get("downtime_ms") is not None
            timed = timed or m["kind"] == "storage"  # the guest never pauses
            if m["state"] in FINAL and timed:
                return m
            if time.monotonic() > end:
                raise typer.Exit(_fail(f"gave up waiting after {timeout:.0f}s: {describe(m)}"))
            time.sleep(POLL_S)


def load_said(p: dict[str, Any]) -> str:
    """A live migration's load, as QEMU reckons it: passes over the guest's memory, its dirty
    rate, the pause the last pass would take now, auto-converge's throttle, postcopy."""
    rate = f", sending {p['transfer_rate_mib_s']:.0f} MiB/s" if p.get("transfer_rate_mib_s") else ""
    if not p.get("passes"):
        return rate
    said = f"{rate}, pass {p['passes']}"
    if p.get("dirty_rate_mib_s"):
        said += f", dirtying {p['dirty_rate_mib_s']:.0f} MiB/s"
    if p.get("expected_downtime_ms"):
        said += f", expected downtime {p['expected_downtime_ms']:.0f} ms"
    if p.get("cpu_throttle_pct"):
        said += f", vCPUs throttled {p['cpu_throttle_pct']} %"
    return said + (", postcopy" if p.get("postcopy") else "")


_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
_BANDWIDTH = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?(?:/s)?$", re.IGNORECASE)


def bandwidth_mib_s(text: str) -> int:
    """``100M``, ``1.5G``, ``2048K``, ``100`` (MiB/s), per second, binary units as QEMU's:
    the whole MiB/s they make (at least 1)."""
    found = _BANDWIDTH.match(text.strip())
    if found is None:
        raise ValueError(f"{text!r} is not a bandwidth: give e.g. 100M or 1G (per second)")
    mib = float(found.group(1)) * _UNITS[found.group(2).upper() or "M"]
    if mib < 1 or mib != int(mib):
        raise ValueError(f"{text!r} is not a whole number of MiB/s (at least 1M)")
    if mib > COUNT_MAX:
        raise ValueError(f"{text!r} is over {COUNT_MAX} MiB/s")
    return int(mib)


def _fail(message: str, code: int = ExitCode.ERROR) -> int:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return code


@friendly_errors
def move(
    name: str = typer.Argument(..., help="VM name."),
    to: str = typer.Option("", "--to", help="Target node; default: the scheduler picks one."),
    live: bool = typer.Option(False, "--live", help="Live migration (the default)."),
    quick: bool = typer.Option(False, "--quick", help="Save state, restore on the target."),
    storage: str = typer.Option(
        "", "--storage", help="Move its disks to this volume instead (it stays on its node)."
    ),
    with_storage: str = typer.Option(
        "",
        "--with-storage",
        help="Shared-nothing: copy its disks to this volume of the target as it moves live.",
    ),
    max_bandwidth: str = typer.Option(
        "",
        "--max-bandwidth",
        help="Live: cap this migration's bandwidth, e.g. 100M or 1G (per second; binary "
        "units, MiB/s without a suffix), over the cluster's migration.max_bandwidth_mib_s.",
    ),
    wait: bool = typer.Option(False, "--wait", help="Follow it to the end; non-zero if it fails."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds --wait waits at most."),
    as_json: bool = json_option(),
    api: list[str] | None = api_option(),
) -> None:
    """Move a running VM to another node, live (it keeps running) or quick; or, with
    --storage, move its disks to another volume while it runs."""
    if live and quick:
        raise typer.Exit(_fail("choose one of --live and --quick", ExitCode.USAGE))
    if storage and (to or quick or with_storage):
        raise typer.Exit(
            _fail("--storage moves the disks only: without --to or --quick", ExitCode.USAGE)
        )
    if with_storage and quick:
        raise typer.Exit(_fail("--with-storage moves it live: not with --quick", ExitCode.USAGE))
    if max_bandwidth and (quick or storage):
        raise typer.Exit(_fail("--max-bandwidth caps a live migration only", ExitCode.USAGE))
    cap = None
    if max_bandwidth:
        try:
            cap = bandwidth_mib_s(max_bandwidth)
        except ValueError as e:
            raise typer.Exit(_fail(f"--max-bandwidth: {e}", ExitCode.USAGE)) from None
    with Client.from_options(api) as client:
        if storage:
            m = client.post(f"/vms/{name}/move-storage", {"volume": storage})
            records = "/storage-moves"
        else:
            kind = "quick" if quick else "live"
            body: dict[str, Any] = {"to": to, "kind": kind, "with_storage": with_storage}
            if cap is not None:
                body["max_bandwidth_mib_s"] = cap
            m = client.post(f"/vms/{name}/move", body)
            records = "/migrations"
        if wait:
            m = follow(client, m["id"], timeout, records)
    if as_json:
        print_json(m)
    else:
        console.print(describe(m), highlight=False)
    if m["state"] in ("failed", "cancelled"):
        raise typer.Exit(1)


def _every_move(client: Client) -> dict[str, Any]:
    answer: dict[str, Any] = client.get("/migrations")
    answer["storage_moves"] = client.get("/storage-moves")["moves"]
    return answer


@listing(app, _every_move)
def list_migrations(answer: dict[str, Any]) -> None:
    """Every migration record (storage moves too), oldest first."""
    records = sorted(answer["migrations"] + answer["storage_moves"], key=lambda m: m["created"])
    rows = [
        (
            m["id"],
            m["vm"],
            m["kind"],
            m["source"],
            m["target"] + (f" ({m['volume']})" if m.get("volume") else ""),
            m["state"],
            "" if m.get("downtime_ms") is None else f"{m['downtime_ms']:.0f}",
            "" if m.get("total_ms") is None else f"{m['total_ms']:.0f}",
            m["reason"],
        )
        for m in records
    ]
    columns = ("ID", "VM", "KIND", "FROM", "TO", "STATE", "DOWN MS", "TOTAL MS", "REASON")
    print_table("migrations", columns, rows)


def fetch_record(client: Client, mid: str) -> dict[str, Any]:
    """A migration's record, or a storage move's: one id names either."""
    try:
        record: dict[str, Any] = client.get(f"/migrations/{mid}")
    except ApiError as e:
        if e.status != 404:
            raise
        record = client.get(f"/storage-moves/{mid}")
    return record


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.0f} ms"


def record_rows(m: dict[str, Any]) -> list[tuple[str, object]]:
    p = m["progress"]
    moved = f"{p['bytes_transferred']} of {p['bytes_total'] or '?'} bytes"
    rows: list[tuple[str, object]] = [
        ("vm", m["vm"]),
        ("kind", m["kind"]),
        ("state", m["state"]),
        ("from", m["source"]),
        ("to", m["target"] or ("(its node)" if m["kind"] == "storage" else "(not chosen yet)")),
        ("volume", m.get("volume", "")),
        (
            "bandwidth cap",
            f"{m['max_bandwidth_mib_s']} MiB/s" if m.get("max_bandwidth_mib_s") else "",
        ),
        ("requested by", m.get("requested_by", "")),
        ("created", _when(m["created"])),
        ("updated", _when(m["updated"])),
        ("progress", moved),
        ("load", load_said(p).removeprefix(", ")),
        ("downtime", _ms(m.get("downtime_ms"))),
        ("total", _ms(m.get("total_ms"))),
        ("transfer downtime", _ms(m.get("transfer_downtime_ms"))),
        ("epoch", m.get("epoch", "")),
        ("cpu model", m.get("cpu_model", "")),
        ("reason", m["reason"]),
    ]
    return [(k, v) for k, v in rows if v not in ("", None)]


@app.command("show")
@friendly_errors
def show(
    mid: str = typer.Argument(..., help="Migration (or storage move) id."),
    as_json: bool = json_option(),
    api: list[str] | None = api_option(),
) -> None:
    """Show one migration or storage move: route, state, progress, times, reason."""
    answer(api, lambda client: fetch_record(client, mid), as_json, _show_record)


def _show_record(m: dict[str, Any]) -> None:
    print_table(f"migration {m['id']}", ("FIELD", "VALUE"), record_rows(m))


@app.command("cancel")
@friendly_errors
def cancel(
    mid: str = typer.Argument(..., help="Migration id."),
    as_json: bool = json_option(),
    api: list[str] | None = api_option(),
) -> None:
    """Cancel a migration (or storage move) before the switch; the VM keeps running where
    it was, on its old disks."""

    def cancelled(client: Client) -> Any:
        try:
            return client.post(f"/migrations/{mid}/cancel")
        except ApiError as e:
            if e.status != 404:
                raise
            return client.post(f"/storage-moves/{mid}/cancel")

    answer(api, cancelled, as_json, lambda m: console.print(describe(m), highlight=False))
