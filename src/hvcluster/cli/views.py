"""The two shapes most ``hvc`` reads share: ``list`` (a collection) and ``show NAME`` (one
item). Each GETs from the API and prints JSON for scripts (``--json``) or, for people, what
the command's own function makes of the answer (a table). Written once here so that every
such command takes the same options and treats them the same way.

    @listing(app, "/nodes")
    def list_nodes(answer: dict[str, Any]) -> None:
        \"\"\"List nodes: ...\"\"\"  # the command's help
        print_table(...)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import typer

from hvcluster.cli.client import Client, api_option
from hvcluster.cli.output import console, friendly_errors, print_json

Show = Callable[[Any], None]  # prints an answer for people
Read = Callable[[Client], Any]  # what a list asks of the API, when more than one GET
Ask = Callable[[Client, str], Any]  # what a command asks of the API about the NAME it is given
Told = Callable[[str, Any], None]  # prints the answer about NAME for people


def json_option(help: str = "Print JSON for scripts.") -> Any:
    """The ``--json`` option of every command that can answer scripts."""
    return typer.Option(False, "--json", help=help)


def revision_option(what: str) -> Any:
    """``--revision``: the change applies only if ``what`` is still at that revision."""
    return typer.Option(
        None,
        "--revision",
        help=f"Only if the {what} is still at this revision: exit code 4 if it changed since.",
    )


def reason_option(help: str = "Why (kept in the event log).") -> Any:
    """The ``--reason`` option of every command that changes something an event records."""
    return typer.Option("", "--reason", help=help)


def patch_settings(
    api: list[str] | None,
    path: str,
    settings: dict[str, Any],
    revision: int | None,
    reason: str,
    as_json: bool,
    show: Show,
) -> None:
    """PATCH ``settings`` to ``path`` (``/cluster/config``, ``/vms/NAME``), only if it is
    still at ``revision`` (None: any) and saying why (``reason``, may be empty), then
    :func:`answer` with what the API says."""
    body: dict[str, Any] = {"settings": settings}
    if revision is not None:
        body["revision"] = revision
    if reason:
        body["reason"] = reason
    answer(api, lambda client: client.patch(path, body), as_json, show)


def print_changes(changes: list[dict[str, Any]], later: str) -> None:
    """Each setting a PATCH changed, from what to what; ``later`` says when the ones that
    need a restart take effect."""
    for c in changes:
        note = f" ({later})" if c["restart_needed"] else ""
        console.print(f"{c['key']}: {c['before']} -> {c['after']}{note}", highlight=False)


def listing(app: typer.Typer, path: str | Read, name: str = "list") -> Callable[[Show], Show]:
    """Register the decorated function as ``name``: GET ``path`` (or ask ``read``), then
    print the answer as JSON, or hand it to the function."""
    read = path if callable(path) else lambda client: client.get(path)

    def register(show: Show) -> Show:
        @app.command(name, help=inspect.cleandoc(show.__doc__ or ""))
        @friendly_errors
        def command(as_json: bool = json_option(), api: list[str] | None = api_option()) -> None:
            answer(api, read, as_json, show)

        return show

    return register


def showing(app: typer.Typer, collection: str, what: str) -> Callable[[Show], Show]:
    """Register the decorated function as ``show NAME``: GET ``collection/NAME``, then
    print the answer as JSON, or hand it to the function."""

    def register(show: Show) -> Show:
        help = inspect.cleandoc(show.__doc__ or "")

        def get(client: Client, name: str) -> Any:
            return client.get(f"{collection}/{name}")

        _named(app, "show", help, what, get, lambda _, found: show(found))
        return show

    return register


def asking(app: typer.Typer, verb: str, what: str, path: str) -> Callable[[Told], Told]:
    """Register the decorated function as ``verb NAME``: GET ``path`` with NAME in it
    (``{name}``; ``/vms/{name}/checkpoints``), then print the answer as JSON, or hand it
    to the function with NAME. For the reads about one item that are not its ``show``."""

    def register(show: Told) -> Told:
        help = inspect.cleandoc(show.__doc__ or "")

        def get(client: Client, name: str) -> Any:
            return client.get(path.format(name=name))

        _named(app, verb, help, what, get, show)
        return show

    return register


def _named(
    app: typer.Typer,
    verb: str,
    help: str,
    what: str,
    ask: Ask,
    show: Told,
) -> None:
    """Register ``verb NAME`` (``what`` NAME names): ``ask`` the API about NAME, then
    :func:`answer` with what it says (``show`` given NAME too)."""

    @app.command(verb, help=help)
    @friendly_errors
    def command(
        name: str = typer.Argument(..., help=f"{what} name."),
        as_json: bool = json_option(),
        api: list[str] | None = api_option(),
    ) -> None:
        answer(api, lambda client: ask(client, name), as_json, lambda found: show(name, found))


def answer(api: list[str] | None, read: Read, as_json: bool, show: Show) -> Any:
    """Ask the API (``read``, one client), then print its answer as JSON (``--json``, for
    scripts: as the API gave it), or hand it to ``show`` (for people); the answer."""
    with Client.from_options(api) as client:
        answer = read(client)
    if as_json:
        print_json(answer)
    else:
        show(answer)
    return answer


def removing(
    app: typer.Typer, collection: str, what: str, help: str, verb: str = "rm", done: str = "removed"
) -> None:
    """Register ``verb NAME``: DELETE ``collection/NAME``, then say it is ``done``."""

    def said(name: str, _: Any) -> None:
        console.print(f"{done} {what} [bold]{name}[/]", highlight=False)

    def delete(client: Client, name: str) -> Any:
        return client.delete(f"{collection}/{name}")

    _named(app, verb, help, what.capitalize(), delete, said)


def post(api: list[str] | None, path: str, body: Any = None) -> Any:
    """One POST to the API, through a client opened for it: the answer."""
    with Client.from_options(api) as client:
        return client.post(path, body)
