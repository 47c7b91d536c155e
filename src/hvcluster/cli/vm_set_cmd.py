"""``hvc vm set NAME``: change a VM's size, CPU model, boot or recovery policy, through
``PATCH /vms/{name}`` (what needs the VM to restart says so)."""

from __future__ import annotations

from typing import Any

import typer

from hvcluster.cli.client import UsageError, api_option
from hvcluster.cli.output import console, err_console, friendly_errors
from hvcluster.cli.views import (
    json_option,
    patch_settings,
    print_changes,
    reason_option,
    revision_option,
)
from hvcluster.models.settings import dotted_fields, typed_value
from hvcluster.models.vm import FailbackMode, Priority, VMSpec

_FIELDS = dict(dotted_fields(VMSpec))


def _names(values: list[str] | None) -> list[str] | None:
    """A repeatable list option: each value may itself be comma-separated; a single empty
    value ("") clears the list."""
    if values is None:
        return None
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def _generic(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or key not in _FIELDS:
        raise UsageError(f"--set {item!r}: give KEY=VALUE with KEY a VM spec field (ha.priority)")
    return key, typed_value(_FIELDS[key], text)


def _window(text: str) -> tuple[int, int]:
    start, _, end = text.partition("-")
    try:
        return int(start), int(end)
    except ValueError:
        raise UsageError(f"--failback-window {text!r}: give START-END hours, e.g. 22-6") from None


@friendly_errors
def set_vm(
    name: str = typer.Argument(..., help="VM name."),
    vcpus: int | None = typer.Option(None, "--vcpus", help="Virtual CPUs (at its next start)."),
    memory: int | None = typer.Option(None, "--memory", help="Memory in MiB (at its next start)."),
    cpu_model: str | None = typer.Option(
        None, "--cpu-model", help="Guest CPU model ('' for the node's default; next start)."
    ),
    priority: Priority | None = typer.Option(None, "--priority", help="Recovery priority."),
    preferred_owner: list[str] | None = typer.Option(
        None,
        "--preferred-owner",
        help="Preferred nodes, most preferred first (repeatable or comma-separated; '' clears).",
    ),
    possible_owner: list[str] | None = typer.Option(
        None, "--possible-owner", help="Nodes allowed to run it ('' clears: any node)."
    ),
    anti_affinity: list[str] | None = typer.Option(
        None, "--anti-affinity", help="Anti-affinity classes ('' clears)."
    ),
    hard_anti_affinity: bool | None = typer.Option(
        None,
        "--hard-anti-affinity/--soft-anti-affinity",
        help="Never share a node with its classes, or only avoid it.",
        show_default=False,
    ),
    affinity: list[str] | None = typer.Option(
        None, "--affinity", help="Affinity classes: run beside their VMs ('' clears)."
    ),
    hard_affinity: bool | None = typer.Option(
        None,
        "--hard-affinity/--soft-affinity",
        help="Never run apart from its affinity classes' VMs, or only prefer not to.",
        show_default=False,
    ),
    failback: FailbackMode | None = typer.Option(None, "--failback", help="Failback mode."),
    failback_window: str | None = typer.Option(
        None, "--failback-window", help="START-END local hours for --failback window (22-6)."
    ),
    failover_threshold: int | None = typer.Option(
        None, "--failover-threshold", help="Failovers allowed in the period before it is left."
    ),
    start_group: str | None = typer.Option(None, "--start-group", help="Its start-order group."),
    setting: list[str] | None = typer.Option(
        None, "--set", help="Any other spec field, KEY=VALUE (ha.failover_period_s=3600)."
    ),
    revision: int | None = revision_option("spec (spec_revision of 'vm show --json')"),
    reason: str = reason_option(),
    as_json: bool = json_option(),
    api: list[str] | None = api_option(),
) -> None:
    """Change a VM's spec. Size and CPU model (--vcpus, --memory, --cpu-model) and boot
    settings reach a running VM at its next cold start (stop and start it); the policy
    (priority, owners, anti-affinity, failback) applies at once."""
    settings: dict[str, Any] = dict(_generic(s) for s in setting or ())
    simple: dict[str, Any] = {
        "vcpus": vcpus,
        "memory_mib": memory,
        "cpu_model": cpu_model,
        "ha.priority": priority.value if priority else None,
        "ha.preferred_owners": _names(preferred_owner),
        "ha.possible_owners": _names(possible_owner),
        "ha.anti_affinity_classes": _names(anti_affinity),
        "ha.anti_affinity_enforced": hard_anti_affinity,
        "ha.affinity_classes": _names(affinity),
        "ha.affinity_enforced": hard_affinity,
        "ha.failback.mode": failback.value if failback else None,
        "ha.failover_threshold": failover_threshold,
        "ha.start_group": start_group,
    }
    settings.update({k: v for k, v in simple.items() if v is not None})
    if failback_window is not None:
        start, end = _window(failback_window)
        settings["ha.failback.window_start_hour"] = start
        settings["ha.failback.window_end_hour"] = end
    if not settings:
        raise UsageError("nothing to change: give at least one option (hvc vm set --help)")
    patch_settings(api, f"/vms/{name}", settings, revision, reason, as_json, _changed)


def _changed(done: dict[str, Any]) -> None:
    name = done["name"]
    if not done["changes"]:
        console.print(f"vm [bold]{name}[/]: nothing changed", highlight=False)
        return
    print_changes(done["changes"], "at its next start")
    console.print(
        f"vm [bold]{name}[/] changed (spec revision {done['spec_revision']})", highlight=False
    )
    if done["restart_needed"]:
        err_console.print(
            f"[yellow]note:[/] {name} runs with its old {', '.join(done['restart_needed'])} "
            f"until it is stopped and started ('hvc vm stop {name}', then 'hvc vm start "
            f"{name}'); live and quick moves keep them meanwhile",
            highlight=False,
        )
