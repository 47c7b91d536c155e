"""``/api/v1/vms/{name}/console/serial`` and ``.../vnc``: a VM's consoles over a websocket.

Every console is a unix socket of the VM on its owner (:mod:`hvcluster.models.console`),
never a TCP port. Any agent accepts a console: the VM's owner bridges the websocket to the
socket (:class:`~.console_bridge.UnixBackend`); any other agent opens the same websocket on
the owner, forwarding the caller's own token (so nobody can do through another agent more
than directly), and bridges the two (:class:`~.console_bridge.PeerBackend`). A forwarded
console is never forwarded again: an owner that no longer runs the VM refuses it.

**The console follows the VM** (a live migration, a failover, a restart). The agent the
client is connected to notices the console end (the source's QEMU goes away once the VM runs
on the target) and looks where the VM runs now, for up to :data:`FOLLOW_S`:

* ``serial``: it reconnects there itself, the client's websocket staying open; the terminal
  gets one line saying so (``[hvc: ...]``). What the guest wrote in between is in its
  serial.log only.
* ``vnc``: an RFB session cannot be carried over to another server, so the websocket is
  closed with code :data:`CLOSE_MOVED` once the VM runs again (the reason names the node)
  and the client reconnects (the dashboard's page does).

A VM that stopped or was deleted ends the console (code 1000, the reason says why); so does
one not running again within :data:`FOLLOW_S` (:data:`CLOSE_LOST`).

Who may: ``operator`` or above (api/auth.py judges a websocket handshake as a write); a
refused handshake is answered with the API's usual HTTP status and error body (401, 403,
404 no such VM, 409 not running or the serial console in use, 503 too many consoles). A
serial console has one user at a time (QEMU's serial socket takes one client); a VNC console
any number (QEMU's VNC server shares the screen). Opening one is an event (``vm.console``).
The token is checked again every :data:`RECHECK_S` while a console is open: revoked or
expired, the console ends (:data:`CLOSE_REVOKED`).

The websocket carries bytes both ways (binary messages; text ones are taken as UTF-8). It
accepts the subprotocols ``hvc.console`` and, for VNC clients such as noVNC, ``binary``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from starlette.websockets import WebSocket, WebSocketDisconnect

from hvcluster.api import vms
from hvcluster.api.auth import authenticate
from hvcluster.api.console_bridge import (
    FORWARDED,
    SERIAL_BACKLOG,
    Backend,
    PeerBackend,
    UnixBackend,
    pump,
)
from hvcluster.api.context import ApiContext, Ctx, ValidName
from hvcluster.api.validation import api_address
from hvcluster.models.console import ConsoleKind
from hvcluster.models.errors import Conflict, HvcError, NotFound, StoreError, Unauthenticated
from hvcluster.models.lifecycle import VMState
from hvcluster.models.node import Node
from hvcluster.models.vm import Placement, VMSpec, VMStatus
from hvcluster.store.reads import read_value
from hvcluster.tasks import cancel_all

# Where this agent finds a console of a VM it runs: the socket, or None if it does not run
# the VM (the agent asks its driver). It raises Conflict when the VM has no such console.
LocalConsole = Callable[[str, ConsoleKind], Awaitable[Path | None]]

MAX_CONSOLES = 64  # websockets open at once on one agent (beyond: 503)
FOLLOW_S = 60.0  # how long a console waits for its VM to run again somewhere
POLL_S = 0.5
LIVE = frozenset({VMState.STARTING, VMState.RUNNING, VMState.PAUSED, VMState.MIGRATING})
SUBPROTOCOLS = ("hvc.console", "binary")
CLOSE_ENDED = 1000  # the VM stopped or was deleted
CLOSE_MOVED = 4001  # (vnc) the VM runs again, on the node the reason names: reconnect
CLOSE_LOST = 4002  # the VM did not run again within FOLLOW_S
CLOSE_REVOKED = 4401  # the caller's token was revoked or expired while the console was open
CLOSE_FAILED = 1011
RECHECK_S = 30.0  # how often an open console's token is checked again

router = APIRouter(tags=["consoles"])


class ConsoleGone(Conflict):
    """The VM was deleted or asked to stop: its console will not come back."""


@dataclass
class Consoles:
    """An agent's consoles (``app.state.consoles``): the way to its own VMs' sockets, and
    the sessions open."""

    local: LocalConsole | None = None
    max_open: int = MAX_CONSOLES
    recheck_s: float = RECHECK_S
    open: int = 0
    serial_users: dict[str, str] = field(default_factory=dict)  # VM -> who has its console


@router.websocket("/vms/{name}/console/{kind}")
async def console(websocket: WebSocket, ctx: Ctx, name: ValidName, kind: ConsoleKind) -> None:
    """A VM's console (see the module): bytes both ways between this websocket and the
    console, wherever the VM runs."""
    consoles: Consoles = websocket.app.state.consoles
    forwarded = websocket.headers.get(FORWARDED) == "1"
    if consoles.open >= consoles.max_open:
        raise HTTPException(503, f"{consoles.max_open} consoles are open on {ctx.node} already")
    consoles.open += 1
    try:
        backend, node = await open_console(ctx, consoles, name, kind, forwarded)
        try:
            await websocket.accept(subprotocol=chosen_subprotocol(websocket))
        except BaseException:
            await backend.close()
            raise
        if not forwarded:
            await ctx.record(
                "vm.console", f"vm/{name}", f"{kind.value} console opened (the VM runs on {node})"
            )
        await until_revoked(
            websocket,
            ctx,
            consoles.recheck_s,
            bridge(websocket, ctx, consoles, name, kind, forwarded, backend),
        )
    finally:
        consoles.open -= 1


async def until_revoked(
    websocket: WebSocket, ctx: ApiContext, every_s: float, work: Coroutine[Any, Any, None]
) -> None:
    """Run ``work`` (the console) while the caller's token stays valid, checked every
    ``every_s``: a token revoked or expired meanwhile ends its open consoles too (code
    :data:`CLOSE_REVOKED`). A store that cannot be asked ends nothing."""
    bridged = asyncio.create_task(work)
    checked = asyncio.create_task(_invalid(ctx, every_s))
    try:
        done, _ = await asyncio.wait({bridged, checked}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # (a cancellation of ours is not swallowed while they stop: hvcluster.tasks)
        await cancel_all([bridged, checked])
    if checked in done:
        await close(websocket, CLOSE_REVOKED, checked.result())


async def _invalid(ctx: ApiContext, every_s: float) -> str:
    """Once the caller's token no longer authenticates: why."""
    while True:
        await asyncio.sleep(every_s)
        if ctx.caller is None:
            continue
        try:
            await authenticate(ctx.store, ctx.keys, f"Bearer {ctx.caller.credential}", time.time())
        except Unauthenticated as e:
            return str(e)
        except StoreError:
            continue


def chosen_subprotocol(websocket: WebSocket) -> str | None:
    """The first subprotocol offered that we speak (a token subprotocol is never echoed)."""
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")]
    return next((p for p in offered if p in SUBPROTOCOLS), None)


async def bridge(
    websocket: WebSocket,
    ctx: ApiContext,
    consoles: Consoles,
    name: str,
    kind: ConsoleKind,
    forwarded: bool,
    backend: Backend,
) -> None:
    """Pump until the client leaves; when the console ends first, follow the VM."""
    while True:
        try:
            client_left = await pump(websocket, backend)
        finally:
            await backend.close()
        if client_left:
            return
        if forwarded:  # the agent that asked us follows the VM, not we
            await close(websocket, CLOSE_ENDED, "the console ended here")
            return
        if kind is ConsoleKind.SERIAL:
            await say(websocket, f"the console of {name} ended; waiting for the VM to run")
        outcome = await follow(websocket, ctx, consoles, name, kind)
        if outcome is None:
            return  # the client left meanwhile
        if isinstance(outcome, str):
            await close(websocket, *_ending(outcome))
            return
        backend, node = outcome
        if kind is ConsoleKind.VNC:
            await backend.close()
            await close(websocket, CLOSE_MOVED, f"vm {name} runs on {node}: reconnect")
            return
        await say(websocket, f"the console of {name} on {node}")


def _ending(why: str) -> tuple[int, str]:
    return (CLOSE_LOST, why) if why.startswith("lost:") else (CLOSE_ENDED, why)


async def follow(
    websocket: WebSocket, ctx: ApiContext, consoles: Consoles, name: str, kind: ConsoleKind
) -> tuple[Backend, str] | str | None:
    """Wait for the VM to run again and open its console there: ``(backend, node)``; a
    reason the console ends for good; None if the client left first. What the client types
    meanwhile goes nowhere."""
    left = asyncio.create_task(_client_leaves(websocket))
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FOLLOW_S
        while not left.done():
            try:
                return await open_console(ctx, consoles, name, kind, forwarded=False)
            except ConsoleGone as e:
                return str(e)
            except HvcError as e:
                if loop.time() >= deadline:
                    return f"lost: {e}"[:120]
            await asyncio.wait({left}, timeout=POLL_S)
        return None
    finally:
        await cancel_all([left])


async def _client_leaves(websocket: WebSocket) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass


async def open_console(
    ctx: ApiContext, consoles: Consoles, name: str, kind: ConsoleKind, forwarded: bool
) -> tuple[Backend, str]:
    """The console of ``name`` where it runs now, and that node."""
    node = await owner(ctx, name)
    if node == ctx.node:
        return await open_local(ctx, consoles, name, kind), node
    if forwarded:
        raise Conflict(f"vm {name!r} does not run on {ctx.node} but on {node}")
    return await open_peer(ctx, name, kind, node), node


async def owner(ctx: ApiContext, name: str) -> str:
    """The node ``name`` runs on, as its owner reports it."""
    spec = await read_value(ctx.store, ctx.keys.vm(name), VMSpec, ctx.corrupt)
    if spec is None:
        raise NotFound(f"no vm named {name!r}")
    placement = await read_value(ctx.store, ctx.keys.placement(name), Placement, ctx.corrupt)
    status = await read_value(ctx.store, ctx.keys.status(name), VMStatus, ctx.corrupt)
    state = vms.state_of(spec, placement, status)
    if status is None or state not in LIVE or not status.node:
        if spec.desired_state == "stopped":
            raise ConsoleGone(f"vm {name} is stopped: it has no console")
        raise Conflict(f"vm {name!r} is {state.value}: it has a console once it runs")
    return status.node


async def open_local(
    ctx: ApiContext, consoles: Consoles, name: str, kind: ConsoleKind
) -> UnixBackend:
    if consoles.local is None:
        raise Conflict(f"the agent on {ctx.node} serves no consoles")
    path = await consoles.local(name, kind)
    if path is None:
        raise Conflict(f"vm {name!r} does not run on {ctx.node} (yet)")
    if kind is not ConsoleKind.SERIAL:
        return await UnixBackend.open(path, None)
    user = consoles.serial_users.get(name)
    if user is not None:
        raise Conflict(f"the serial console of {name} is in use by {user}: one user at a time")
    who = ctx.actor
    consoles.serial_users[name] = who
    try:
        backend = await UnixBackend.open(path, SERIAL_BACKLOG)
    except BaseException:
        del consoles.serial_users[name]
        raise

    def release() -> None:
        if consoles.serial_users.get(name) == who:
            del consoles.serial_users[name]

    backend.on_close = release
    return backend


async def open_peer(ctx: ApiContext, name: str, kind: ConsoleKind, node: str) -> PeerBackend:
    if ctx.caller is None:
        raise Conflict(f"vm {name!r} runs on {node}: ask its agent")
    record = await read_value(ctx.store, ctx.keys.node(node), Node, ctx.corrupt)
    if record is None:
        raise Conflict(f"vm {name!r} runs on {node}, whose node record cannot be read")
    scheme = "wss" if ctx.peers.tls else "ws"
    url = f"{scheme}://{api_address(record)}/api/v1/vms/{name}/console/{kind.value}"
    tls = ssl.create_default_context(cafile=ctx.peers.ca) if ctx.peers.tls else None
    return await PeerBackend.open(url, ctx.caller.credential, tls, node)


async def say(websocket: WebSocket, line: str) -> None:
    """A line of ours on a serial console's terminal."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await websocket.send_bytes(f"\r\n[hvc: {line}]\r\n".encode())


async def close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await websocket.close(code, reason.encode()[:120].decode(errors="ignore"))
