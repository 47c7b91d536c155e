"""``hvc vm``: create, list, show, start, stop and remove VMs (through the API)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from hvcluster.cli.client import UsageError, api_option
from hvcluster.cli.output import console, err_console, friendly_errors, print_table
from hvcluster.cli.views import answer, json_option, listing, reason_option, showing
from hvcluster.models.vm import Priority

app = typer.Typer(help="Create, list and manage VMs.", no_args_is_help=True)


def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def warn_skipped(answer: dict[str, Any]) -> None:
    for item in answer.get("skipped", []):
        err_console.print(
            f"[yellow]warning:[/] skipped {item['key']}: {item['error']}", highlight=False
        )


def warned(answer: dict[str, Any]) -> dict[str, Any]:
    """Say the answer's warnings (admission control's, say) on stderr, in yellow, whatever
    the output format: the admin sees them as they act."""
    for warning in answer.get("warnings", []):
        err_console.print(f"[yellow]warning: {warning}[/]", highlight=False)
    return answer


def _disk(value: str) -> dict[str, Any]:
    """``/abs/path.qcow2`` or ``VOLUME:relative/path.qcow2``, either with ``@GIB`` to have
    it created (or grown to) that size."""
    value, at, size = value.rpartition("@") if "@" in value else (value, "", "")
    volume, sep, path = value.partition(":")
    disk: dict[str, Any] = {"path": path, "volume": volume} if sep and path else {"path": value}
    if at:
        try:
            disk["size_gib"] = float(size)
        except ValueError:
            raise UsageError(f"--disk {value}@{size}: the size after '@' is in GiB") from None
    if disk["path"].endswith((".raw", ".img")):
        disk["format"] = "raw"
    return disk


def _load_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a JSON object (a VM spec)")
    return data


@app.command("create")
@friendly_errors
def create(
    name: str | None = typer.Argument(None, help="VM name (or take it from --file)."),
    vcpus: int | None = typer.Option(None, "--vcpus", help="Virtual CPUs."),
    memory: int | None = typer.Option(None, "--memory", help="Memory in MiB."),
    disk: list[str] | None = typer.Option(
        None,
        "--disk",
        help="A disk: VOLUME:relative/path.qcow2, with @GIB to create it that size; or "
        "/abs/path.qcow2 under a directory the cluster config allows (repeatable).",
    ),
    priority: Priority | None = typer.Option(None, "--priority", help="Recovery priority."),
    preferred_owner: list[str] | None = typer.Option(
        None, "--preferred-owner", help="Preferred node, most preferred first (repeatable)."
    ),
    possible_owner: list[str] | None = typer.Option(
        None, "--possible-owner", help="A node allowed to run it (repeatable; none = any)."
    ),
    anti_affinity: list[str] | None = typer.Option(
        None, "--anti-affinity", help="Anti-affinity class (repeatable)."
    ),
    hard_anti_affinity: bool = typer.Option(
        False, "--hard-anti-affinity", help="Never share a node with its anti-affinity classes."
    ),
    affinity: list[str] | None = typer.Option(
        None, "--affinity", help="Affinity class: run beside its other VMs (repeatable)."
    ),
    hard_affinity: bool = typer.Option(
        False, "--hard-affinity", help="Never run apart from its affinity classes' VMs."
    ),
    cpu_model: str | None = typer.Option(
        None,
        "--cpu-model",
        help="The guest's CPU model (QEMU -cpu name); it then starts only on nodes that "
        "provide it. Default: the model of the node that starts it; either way it keeps the "
        "model through live and quick migrations.",
    ),
    panic_monitor: bool = typer.Option(
        False,
        "--panic-monitor",
        help="Give the guest a pvpanic device: a guest kernel panic fails the VM, which is "
        "then restarted on its node, then moved (its restart threshold).",
    ),
    heartbeat_timeout: float | None = typer.Option(
        None,
        "--heartbeat-timeout",
        help="Seconds the guest agent may leave its heartbeat (guest-sync on a virtio-serial "
        "channel) unanswered before the VM is failed and restarted. Default: not watched.",
    ),
    heartbeat_grace: float | None = typer.Option(
        None,
        "--heartbeat-grace",
        help="Seconds after each (re)start for the guest's first answer: its whole boot "
        "(default 300).",
    ),
    stopped: bool = typer.Option(False, "--stopped", help="Create it without starting it."),
    file: Path | None = typer.Option(None, "--file", help="A VM spec as JSON; options override."),
    as_json: bool = json_option("Print the created VM as JSON."),
    api: list[str] | None = api_option(),
) -> None:
    """Create a VM. The controller places it and an agent starts it (unless --stopped)."""
    spec: dict[str, Any] = _load_file(file) if file else {}
    if name is not None:
        spec["name"] = name
    if "name" not in spec:
        raise UsageError("give the VM a NAME (or a --file whose spec has a name)")
    for key, value in (("vcpus", vcpus), ("memory_mib", memory), ("cpu_model", cpu_model)):
        if value is not None:
            spec[key] = value
    if disk:
        spec["disks"] = [_disk(d) for d in disk]
    if stopped:
        spec["desired_state"] = "stopped"
    given = {  # what the options say (None: not given), over the --file's
        "priority": priority.value if priority is not None else None,
        "preferred_owners": preferred_owner or None,
        "possible_owners": possible_owner or None,
        "anti_affinity_classes": anti_affinity or None,
        "anti_affinity_enforced": hard_anti_affinity or None,
        "affinity_classes": affinity or None,
        "affinity_enforced": hard_affinity or None,
    }
    ha = dict(spec.get("ha") or {}) | {k: v for k, v in given.items() if v is not None}
    if ha:
        spec["ha"] = ha
    watch = {
        "panic": panic_monitor or None,
        "heartbeat_timeout_s": heartbeat_timeout,
        "heartbeat_grace_s": heartbeat_grace,
    }
    monitor = dict(spec.get("monitor") or {}) | {k: v for k, v in watch.items() if v is not None}
    if monitor:
        spec["monitor"] = monitor
    answer(api, lambda client: warned(client.post("/vms", spec)), as_json, _created)


def _created(vm: dict[str, Any]) -> None:
    console.print(
        f"created vm [bold]{vm['name']}[/] (desired {vm['desired_state']}): "
        "the controller will place it",
        highlight=False,
    )


@listing(app, "/vms")
def list_vms(answer: dict[str, Any]) -> None:
    """List VMs: desired and actual state, where each is placed."""
    rows = []
    for vm in answer["vms"]:
        spec, placement = vm["spec"], vm.get("placement") or {}
        rows.append(
            (
                vm["name"],
                vm["state"],
                vm["desired_state"],
                vm["node"],
                placement.get("epoch"),
                spec["vcpus"],
                spec["memory_mib"],
                spec["ha"]["priority"],
            )
        )
    print_table(
        "VMs", ("NAME", "STATE", "DESIRED", "NODE", "EPOCH", "VCPUS", "MIB", "PRIORITY"), rows
    )
    warn_skipped(answer)


def _monitor(monitor: dict[str, Any]) -> str:
    """What watches the guest OS, in words: ``off`` when nothing does."""
    watched = ["panic"] if monitor.get("panic") else []
    if monitor.get("heartbeat_timeout_s"):
        watched.append(
            f"heartbeat within {monitor['heartbeat_timeout_s']:g} s"
            f" (first after {monitor.get('heartbeat_grace_s', 300):g} s)"
        )
    return ", ".join(watched) or "off"


def _show_rows(vm: dict[str, Any]) -> list[tuple[str, object]]:
    spec, ha = vm["spec"], vm["spec"]["ha"]
    placement, status = vm.get("placement") or {}, vm.get("status") or {}
    disks = ", ".join(
        (f"{d['volume']}:" if d.get("volume") else "") + d["path"] for d in spec["disks"]
    )
    rows: list[tuple[str, object]] = [
        ("state", vm["state"]),
        ("desired", vm["desired_state"]),
        ("node", vm["node"]),
        ("epoch", placement.get("epoch", "")),
        ("placed because", placement.get("reason", "")),
        ("vcpus", spec["vcpus"]),
        ("memory", f"{spec['memory_mib']} MiB"),
        ("disks", disks),
        ("nics", ", ".join(f"{n['switch']} {n['mac']}" for n in spec["nics"])),
        ("priority", ha["priority"]),
        ("preferred owners", ", ".join(ha["preferred_owners"])),
        ("possible owners", ", ".join(ha["possible_owners"]) or "any"),
        (
            "anti-affinity",
            ", ".join(ha["anti_affinity_classes"])
            + (" (hard)" if ha["anti_affinity_enforced"] and ha["anti_affinity_classes"] else ""),
        ),
        ("guest monitor", _monitor(spec.get("monitor") or {})),
    ]
    if status:
        rows += [
            (
                "reported by",
                f"{status['node']} (epoch {status['epoch']})" if status["node"] else "controller",
            ),
            ("pid", status.get("pid")),
            ("since", when(status.get("since"))),
            ("restarts", status.get("restarts")),
            ("last error", status.get("last_error")),
        ]
    return rows


@showing(app, "/vms", "VM")
def show(vm: dict[str, Any]) -> None:
    """Show one VM: spec, placement and what its agent reports."""
    print_table(f"vm {vm['name']}", ("FIELD", "VALUE"), _show_rows(vm))


def _desired(verb: str, help: str) -> None:
    """Register ``verb NAME``: ask the API to change the VM's desired state, then say what
    it is now."""

    @app.command(verb, help=help)
    @friendly_errors
    def command(
        name: str = typer.Argument(..., help="VM name."),
        reason: str = reason_option(),
        as_json: bool = json_option(),
        api: list[str] | None = api_option(),
    ) -> None:
        body = {"reason": reason} if reason else None
        answer(
            api, lambda client: warned(client.post(f"/vms/{name}/{verb}", body)), as_json,
            _desired_now,
        )  # fmt: skip


def _desired_now(vm: dict[str, Any]) -> None:
    console.print(
        f"vm [bold]{vm['name']}[/]: desired {vm['desired_state']} (now {vm['state']}"
        + (f" on {vm['node']}" if vm["node"] else "")
        + ")",
        highlight=False,
    )


_desired("start", "Ask for a VM to run (its desired state becomes running).")
_desired("stop", "Ask for a VM to stop (graceful shutdown by its agent).")


@app.command("rm")
@friendly_errors
def rm(
    name: str = typer.Argument(..., help="VM name."),
    disks: bool = typer.Option(
        False,
        "--disks",
        help="Also delete its disk files on shared volumes: those the cluster created for "
        "it that no other VM names (the others are kept; 'hvc events' says why).",
    ),
    as_json: bool = json_option(),
    api: list[str] | None = api_option(),
) -> None:
    """Delete a VM: its spec goes, its agent stops it. Disk images are kept unless --disks."""
    also = (
        " (its disks on volumes that the cluster created and no VM names are deleted once it "
        "is stopped)"
        if disks
        else ""
    )

    def said(_: Any) -> None:
        console.print(f"deleted vm [bold]{name}[/]{also}", highlight=False)

    path = f"/vms/{name}?disks=true" if disks else f"/vms/{name}"
    answer(api, lambda client: client.delete(path), as_json, said)
