"""``hvc volume``: shared volumes, a path every node mounts (through the API)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import typer

from hvcluster.cli.client import api_option
from hvcluster.cli.output import console, friendly_errors, print_table
from hvcluster.cli.views import answer, json_option, listing, removing, showing
from hvcluster.cli.vm_cmd import warn_skipped
from hvcluster.models.errors import HvcError
from hvcluster.models.storage import MARKER, check_volume_path

app = typer.Typer(help="Shared volumes: mark, add, list, show, remove.", no_args_is_help=True)


def _free(v: dict[str, Any]) -> str:
    free = v["free_mib"]
    return f"{min(free.values())} MiB (least)" if free else ""


def place_marker(path: Path) -> tuple[str, bool]:
    """Place the marker of a new volume at ``path`` as an admin does: a new id in
    ``<path>/.hvc-volume``, created exclusively (an existing marker is kept, never
    overwritten). Returns the id it holds and whether it was written now. Refuses ``/`` and
    system directories (:class:`ValueError`), also when ``path`` leads there by a symlink."""
    real = path.resolve()
    check_volume_path(str(real))
    if not real.is_dir():
        raise ValueError(f"{path} is not a directory")
    marker = real / MARKER
    new = uuid.uuid4().hex
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        return marker.read_text(errors="replace").strip()[:64], False
    try:
        os.write(fd, f"{new}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return new, True


@app.command("mark")
@friendly_errors
def mark(
    path: Path = typer.Argument(..., help="The volume's directory, as this host mounts it."),
) -> None:
    """Place a new volume's marker (run once, as an admin, on a host that mounts it): the
    file .hvc-volume with a new id, which 'hvc volume add' then adopts. Never on / or a
    system directory; an existing marker is kept."""
    try:
        found, written = place_marker(path)
    except (ValueError, OSError) as e:
        raise HvcError(f"cannot mark {path}: {e}") from None
    verb = "marked" if written else "already marked"
    console.print(f"{verb} {path} (id {found})", highlight=False)


@app.command("add")
@friendly_errors
def add(
    name: str = typer.Argument(..., help="Volume name."),
    path: str = typer.Argument(..., help="Where every node mounts it (absolute path)."),
    volume_id: str | None = typer.Option(
        None, "--id", help="The id its marker must hold (a check; default: the one it holds)."
    ),
    as_json: bool = json_option(),
    api: list[str] | None = api_option(),
) -> None:
    """Add a shared volume whose marker an admin placed ('hvc volume mark PATH'). Each agent
    then checks it sees it (the marker file with its id)."""
    body = {"name": name, "path": path} | ({"id": volume_id} if volume_id else {})
    answer(api, lambda client: client.post("/volumes", body), as_json, _added)


def _added(v: dict[str, Any]) -> None:
    console.print(f"volume [bold]{v['name']}[/] at {v['path']} (id {v['id']})", highlight=False)


@listing(app, "/volumes")
def list_volumes(answer: dict[str, Any]) -> None:
    """List volumes: which nodes see them, free space, problems."""
    rows = [
        (
            v["name"],
            v["path"],
            ", ".join(v["seen_by"]),
            _free(v),
            "; ".join(f"{n}: {why}" for n, why in sorted(v["problems"].items())),
            len(v["used_by"]),
        )
        for v in answer["volumes"]
    ]
    print_table("volumes", ("NAME", "PATH", "SEEN BY", "FREE", "PROBLEMS", "VMS"), rows)
    warn_skipped(answer)


@showing(app, "/volumes", "Volume")
def show(v: dict[str, Any]) -> None:
    """Show one volume."""
    rows: list[tuple[str, object]] = [
        ("path", v["path"]),
        ("id", v["id"]),
        ("seen by", ", ".join(v["seen_by"])),
        *((f"free on {n}", f"{mib} MiB") for n, mib in sorted(v["free_mib"].items())),
        *((f"problem on {n}", why) for n, why in sorted(v["problems"].items())),
        ("used by", ", ".join(v["used_by"])),
    ]
    print_table(f"volume {v['name']}", ("FIELD", "VALUE"), rows)


removing(
    app,
    "/volumes",
    "volume",
    "Forget a volume (its files stay). Refused while a VM has a disk on it.",
)
