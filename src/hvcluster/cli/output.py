"""How the CLI speaks: Rich tables for people, JSON for scripts, errors without tracebacks,
and exit codes scripts can tell apart (:class:`ExitCode`)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from enum import IntEnum
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from hvcluster.models.errors import Conflict, HvcError, InvalidInput, NotFound

console = Console()
err_console = Console(stderr=True)


def follow_columns() -> None:
    """Take ``$COLUMNS`` as it is when a command runs: the consoles read it once, when this
    module was imported (in-process runs, e.g. tests or a shell, may set it later)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        console.width = err_console.width = int(columns)


P = ParamSpec("P")
R = TypeVar("R")


class ExitCode(IntEnum):
    """What ``hvc`` exits with, the same for every command (``hvc --help`` lists them)."""

    OK = 0
    ERROR = 1  # the API answered with an error (401, 403, 5xx), or what was asked failed
    USAGE = 2  # bad options, or a value the API refused as invalid (422)
    NOT_FOUND = 3  # no such VM, node, migration... (404)
    CONFLICT = 4  # refused by the current state: exists, changed since its revision (409)
    UNREACHABLE = 5  # no API answered (refused, timed out, TLS not trusted)
    INTERRUPTED = 130  # Ctrl-C


EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 an error from the API or a failed action; 2 usage or a value "
    "refused as invalid; 3 not found; 4 conflict (exists, or changed since the revision "
    "given); 5 no API reachable."
)

_BY_STATUS = {404: ExitCode.NOT_FOUND, 409: ExitCode.CONFLICT, 422: ExitCode.USAGE}


def exit_code_of(error: HvcError) -> ExitCode:
    """The exit code of an error: by its HTTP status when the API gave one, by its kind
    when the CLI found it itself."""
    status = getattr(error, "status", 0)
    if status:
        return _BY_STATUS.get(status, ExitCode.ERROR)
    if getattr(error, "unreachable", False):
        return ExitCode.UNREACHABLE
    if getattr(error, "usage", False) or isinstance(error, InvalidInput):
        return ExitCode.USAGE
    if isinstance(error, NotFound):
        return ExitCode.NOT_FOUND
    if isinstance(error, Conflict):
        return ExitCode.CONFLICT
    return ExitCode.ERROR


def fail(message: str, code: int = ExitCode.ERROR) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def friendly_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn our errors (and a Ctrl-C) into a one-line message and an exit code."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except HvcError as e:
            raise fail(str(e), exit_code_of(e)) from None
        except KeyboardInterrupt:
            raise fail("interrupted", ExitCode.INTERRUPTED) from None

    return wrapper


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)
