"""``hvc node``: list, show, pause and resume nodes (through the API)."""

from __future__ import annotations

import time
from typing import Any

import typer

from hvcluster.cli.client import Client, api_option
from hvcluster.cli.output import (
    ExitCode,
    console,
    err_console,
    friendly_errors,
    print_table,
)
from hvcluster.cli.views import answer, json_option, listing, reason_option, showing
from hvcluster.cli.vm_cmd import warn_skipped, when

app = typer.Typer(help="List nodes; pause, drain and resume them.", no_args_is_help=True)


@listing(app, "/nodes")
def list_nodes(answer: dict[str, Any]) -> None:
    """List nodes: alive or not, admin state, watchdog, capacity and use (CPUS: the host's
    CPUs, then its measured CPU use; MIB: its memory, then the share the VMs placed there
    take), VMs placed."""
    rows = []
    for n in answer["nodes"]:
        node = n["node"]
        rows.append(
            (
                n["name"],
                "yes" if n["alive"] else "NO",
                n["admin_state"],
                _watchdog(n, short=True),
                f"{node['address']}:{node['api_port']}",
                f"{node['capacity']['cpus']} {cpu_use(n, short=True)}".removesuffix(" -"),
                f"{node['capacity']['memory_mib']} {memory_use(n, short=True)}",
                n["vms"],
                node["admin_reason"],
            )
        )
    print_table(
        "nodes",
        ("NAME", "ALIVE", "ADMIN", "WATCHDOG", "ADDRESS", "CPUS", "MIB", "VMS", "REASON"),
        rows,
    )
    warn_skipped(answer)


def _pct(used: float, total: float, sep: str = " ") -> str:
    return f"{100 * used / total:.0f}{sep}%" if total > 0 else "-"


def cpu_use(n: dict[str, Any], short: bool = False) -> str:
    """The host's measured CPU use (what the balancer reads): ``45%`` (``short``), else
    ``45 % (1.8 of 4 cores, averaged over 300 s)``; ``-`` while not measured, or when
    the node is not alive (the last figure is stale)."""
    cores, cpus = n.get("cpu_used_cores"), n["node"]["capacity"]["cpus"]
    if cores is None or not n["alive"]:
        return "-"
    if short:
        return _pct(cores, cpus, "")
    window = n.get("cpu_window_s") or 0
    return f"{_pct(cores, cpus)} ({cores:.1f} of {cpus} cores, averaged over {window:.0f} s)"


def memory_use(n: dict[str, Any], short: bool = False) -> str:
    """The memory of the VMs placed on the node, against its memory (no overcommit)."""
    used, total = n.get("memory_placed_mib", 0), n["node"]["capacity"]["memory_mib"]
    return _pct(used, total, "") if short else f"{_pct(used, total)} ({used} of {total} MiB placed)"


def _watchdog(n: dict[str, Any], short: bool = False) -> str:
    """ok; NO since 12:00:01 (and why, when not ``short``): then the node starts no VM."""
    state = str(n.get("watchdog", "unknown"))
    report = n["node"].get("watchdog") or {}
    if state != "not acknowledging":
        return state
    since = f"NO since {time.strftime('%H:%M:%S', time.localtime(report.get('since', 0)))}"
    return since if short else f"{since}: {report.get('problem', '')}; no VM starts here"


def _problems(problems: dict[str, str]) -> str:
    return "; ".join(f"{name}: {why}" for name, why in sorted(problems.items()))


def _volume(node: dict[str, Any], name: str) -> str:
    free = node.get("volume_free_mib", {}).get(name)
    return f"{name} ({free} MiB free)" if free is not None else name


def _rows(n: dict[str, Any]) -> list[tuple[str, object]]:
    node = n["node"]
    inv = node["inventory"]
    return [
        ("alive", f"yes, since {when(n['alive_since'])}" if n["alive"] else "no"),
        ("admin state", node["admin_state"]),
        ("admin reason", node["admin_reason"]),
        ("admin since", when(node["admin_since"])),
        ("watchdog", _watchdog(n)),
        ("address", f"{node['address']}:{node['api_port']}"),
        ("migration address", node.get("migration_address") or f"{node['address']} (its address)"),
        ("capacity", f"{node['capacity']['cpus']} CPUs, {node['capacity']['memory_mib']} MiB"),
        ("cpu use", cpu_use(n)),
        ("memory use", memory_use(n)),
        ("vms placed", n["vms"]),
        ("driver", f"{inv['driver']} ({inv['accelerator']})"),
        ("qemu", inv["qemu_version"]),
        ("switches", ", ".join(node["switches"])),
        ("switches missing", _problems(node.get("switch_problems", {}))),
        ("volumes", ", ".join(_volume(node, v) for v in node["volumes"])),
        ("volumes missing", _problems(node.get("volume_problems", {}))),
        ("failures", len(node["failures"])),
        ("quarantined until", when(node["quarantined_until"])),
        ("labels", ", ".join(f"{k}={v}" for k, v in sorted(node["labels"].items()))),
    ]


@showing(app, "/nodes", "Node")
def show(n: dict[str, Any]) -> None:
    """Show one node."""
    print_table(f"node {n['name']}", ("FIELD", "VALUE"), _rows(n))


def _say(n: dict[str, Any]) -> None:
    console.print(
        f"node [bold]{n['name']}[/]: {n['admin_state']}"
        + (f" ({n['node']['admin_reason']})" if n["node"]["admin_reason"] else ""),
        highlight=False,
    )


@app.command("pause")
@friendly_errors
def pause(
    name: str = typer.Argument(..., help="Node name."),
    reason: str = reason_option("Why (shown with the node)."),
    as_json: bool = json_option(),
    api: list[str] | None = api_option(),
) -> None:
    """Pause a node: no new VMs are placed on it; those it runs keep running."""
    body = {"reason": reason} if reason else None
    answer(api, lambda client: client.post(f"/nodes/{name}/pause", body), as_json, _say)


@app.command("resume")
@friendly_errors
def resume(
    name: str = typer.Argument(..., help="Node name."),
    reason: str = reason_option("Why (shown with the node)."),
    clear_quarantine: bool = typer.Option(
        False, "--clear-quarantine", help="Also resume a node quarantined for failing often."
    ),
    failback: str = typer.Option(
        "policy",
        "--failback",
        help="none: VMs stay where they are; immediate: VMs drained off it move back now; "
        "policy: each VM's failback policy decides.",
    ),
    as_json: bool = json_option(),
    api: list[str] | None = api_option(),
) -> None:
    """Resume a paused node: it takes new VMs again."""
    if failback not in ("none", "immediate", "policy"):
        why = f"--failback must be none, immediate or policy, not {failback!r}"
        raise typer.Exit(_fail(why, ExitCode.USAGE))
    body: dict[str, Any] = {"failback": failback}
    if reason:
        body["reason"] = reason
    if clear_quarantine:
        body["clear_quarantine"] = True
    answer(api, lambda client: client.post(f"/nodes/{name}/resume", body), as_json, _say)


def _fail(message: str, code: int = ExitCode.ERROR) -> int:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return code


@app.command("drain")
@friendly_errors
def drain(
    name: str = typer.Argument(..., help="Node name."),
    reason: str = reason_option("Why (shown with the node)."),
    wait: bool = typer.Option(False, "--wait", help="Follow it to the end; non-zero if VMs stay."),
    timeout: float = typer.Option(1800.0, "--timeout", help="Seconds --wait waits at most."),
    as_json: bool = json_option(),
    api: list[str] | None = api_option(),
) -> None:
    """Move every VM off a node (live, a few at a time); the node ends paused."""

    def drained(client: Client) -> Any:
        client.post(f"/nodes/{name}/drain", {"reason": reason} if reason else None)
        return _follow_drain(client, name, timeout) if wait else client.get(f"/nodes/{name}")

    n = answer(api, drained, as_json, _say)
    if wait and "stayed" in n["node"]["admin_reason"]:
        raise typer.Exit(1)


def _follow_drain(client: Client, name: str, timeout: float) -> dict[str, Any]:
    end = time.monotonic() + timeout
    with err_console.status(f"draining {name}") as status:
        while True:
            n: dict[str, Any] = client.get(f"/nodes/{name}")
            if n["admin_state"] != "draining":
                return n
            moving = [
                m
                for m in client.get("/migrations")["migrations"]
                if m["source"] == name and m["state"] not in ("done", "failed", "cancelled")
            ]
            status.update(
                f"draining {name}: {n['vms']} VM(s) left, moving now: "
                + (", ".join(f"{m['vm']} ({m['state']})" for m in moving) or "none")
            )
            if time.monotonic() > end:
                raise typer.Exit(_fail(f"gave up waiting after {timeout:.0f}s; {name} drains on"))
            time.sleep(0.3)
