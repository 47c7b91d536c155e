"""``hvc vm console NAME``: the VM's serial console in this terminal, through the API's
websocket (``/api/v1/vms/NAME/console/serial``), so it reaches the VM wherever it runs and
follows it across a migration (the agent reconnects it; a ``[hvc: ...]`` line says so).

The terminal is put in raw mode: every key goes to the guest, ^C included. The escape key
(``^]`` by default, as telnet's) leaves. When stdin is not a terminal (a script, a pipe),
what it gives is typed line by line; at its end the console is left once the guest has
been quiet for a moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import termios
import tty
from collections.abc import Sequence

import typer
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from hvcluster.cli.client import (
    PREFIX,
    ApiError,
    Unreachable,
    UsageError,
    api_option,
    given,
    resolve,
    tls_context,
)
from hvcluster.cli.output import friendly_errors

OPEN_TIMEOUT_S = 5.0
QUIET_S = 1.0  # stdin not a terminal and ended: leave once the guest was quiet this long
ENDED_NORMALLY = 1000


def note(line: str, raw: bool = False) -> None:
    """A line of ours on stderr (not the guest's: its output alone goes to stdout).
    ``raw``: the terminal is raw, so a new line must return the carriage itself."""
    text = line + "\n"
    sys.stderr.write(text.replace("\n", "\r\n") if raw else text)
    sys.stderr.flush()


def escape_byte(key: str) -> bytes:
    """``^]`` (or ``^X`` for any letter or ``[\\]^_``) as the byte it sends."""
    if len(key) == 2 and key[0] == "^" and 0x40 <= ord(key[1].upper()) <= 0x5F:
        return bytes([ord(key[1].upper()) - 0x40])
    raise UsageError(f"the escape key must be written ^X (like ^] or ^Q), not {key!r}")


def websocket_url(base: str, name: str) -> str:
    """``ws(s)://HOST/api/v1/vms/NAME/console/serial`` for the API at ``base``."""
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + f"{PREFIX}/vms/{name}/console/serial"
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :] + f"{PREFIX}/vms/{name}/console/serial"
    raise UsageError(f"the API URL {base!r} must start with http:// or https://")


def refused(error: InvalidStatus) -> ApiError:
    status = error.response.status_code
    try:
        message = str(json.loads(bytes(error.response.body or b"{}")).get("error", ""))
    except (ValueError, AttributeError):
        message = ""
    return ApiError(message or f"the console was refused with HTTP {status}", status)


async def open_console(
    urls: Sequence[str], name: str, token: str | None, ca: str | None
) -> tuple[ClientConnection, str]:
    """The console's websocket on the first agent that answers, and that agent's URL."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    errors = []
    for base in urls:
        url = websocket_url(base, name)
        tls = tls_context(ca) if url.startswith("wss://") else None
        try:
            ws = await connect(
                url,
                additional_headers=headers,
                ssl=tls,
                proxy=None,
                open_timeout=OPEN_TIMEOUT_S,
                subprotocols=["hvc.console"],  # type: ignore[list-item]
            )
        except InvalidStatus as e:
            raise refused(e) from None
        except (OSError, TimeoutError, WebSocketException) as e:
            errors.append(f"{base}: {e or type(e).__name__}")
            continue
        return ws, base
    raise Unreachable("cannot reach the hvcluster API: " + "; ".join(errors))


async def session(ws: ClientConnection, escape: bytes, interactive: bool) -> tuple[int, str]:
    """Carry keys to the console and its output to stdout until the escape key, the end of
    stdin, or the server closing; ``(close code, reason)``, code 1000 when we left."""
    loop = asyncio.get_running_loop()
    keys: asyncio.Queue[bytes] = asyncio.Queue()
    fd = sys.stdin.fileno()

    def key_pressed() -> None:
        data = os.read(fd, 1024)
        keys.put_nowait(data)
        if not data:  # the end of stdin: nothing more to wait for
            loop.remove_reader(fd)

    try:
        loop.add_reader(fd, key_pressed)
    except PermissionError:  # stdin is a regular file: type it all at once
        keys.put_nowait(sys.stdin.buffer.read())
        keys.put_nowait(b"")
    out = sys.stdout.buffer
    said = asyncio.Event()

    async def show() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                out.write(message if isinstance(message, bytes) else message.encode())
                out.flush()
                said.set()

    async def type_keys() -> None:
        while data := await keys.get():
            if escape in data:
                await ws.send(data[: data.index(escape)])
                return
            if not interactive:
                data = data.replace(b"\n", b"\r")  # a line typed, as Enter sends it
            await ws.send(data)
        while not interactive:  # stdin ended: leave once the guest has been quiet
            said.clear()
            try:
                async with asyncio.timeout(QUIET_S):
                    await said.wait()
            except TimeoutError:
                return

    shown, typed = asyncio.create_task(show()), asyncio.create_task(type_keys())
    try:
        await asyncio.wait({shown, typed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(fd)
        typed.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await typed
    if not shown.done():
        await ws.close()
        shown.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await shown
        return ENDED_NORMALLY, "left"
    return ws.close_code or ENDED_NORMALLY, ws.close_reason or ""


async def run(name: str, urls: Sequence[str], token: str | None, ca: str | None, key: str) -> int:
    escape = escape_byte(key)
    ws, base = await open_console(urls, name, token, ca)
    interactive = sys.stdin.isatty()
    saved = termios.tcgetattr(sys.stdin.fileno()) if interactive else None
    try:
        if interactive:
            # Raw before we say we are connected, and at once (TCSANOW): setraw's default
            # TCSAFLUSH threw away what was typed between the two (seen as a lost line).
            tty.setraw(sys.stdin.fileno(), termios.TCSANOW)
        note(
            f"Connected to the serial console of {name} (through {base}). Escape key is '{key}'.",
            raw=interactive,
        )
        code, reason = await session(ws, escape, interactive)
    finally:
        if saved is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
        await ws.close()
    if reason == "left":
        note(f"\nLeft the console of {name}.")
        return 0
    note(f"\nThe console of {name} ended: {reason or code}")
    return 0 if code == ENDED_NORMALLY else 1


@friendly_errors
def console(
    name: str = typer.Argument(..., help="VM name."),
    escape: str = typer.Option("^]", "--escape", help="The key that leaves the console."),
    api: list[str] | None = api_option(),
) -> None:
    """The VM's serial console, interactive (wherever the VM runs; it follows a migration).
    The escape key (^] by default) leaves."""
    found = resolve(api, given.token, given.ca)
    code = asyncio.run(run(name, found.urls, found.token, found.ca, escape))
    if code:
        raise typer.Exit(code)
