"""The migration-port probe of ``hvc cluster validate``: a short-lived listener on this
node's migration address, and a connection to another node's.

A live migration's target QEMU listens on its node's address (the ``address`` the agent
registered, which the migration agent hands to ``prepare_incoming``) on a free port the
kernel picks, exactly as :func:`open_listener` does here. So if a source reaches such a
listener, it reaches an incoming migration; if a firewall lets only the agent's API port
through, this is where it shows. The listener greets a connection with a random token (so a
connection that lands anywhere else does not count), takes one connection, and closes after
at most :data:`HOLD_S` seconds. At most :data:`MAX_OPEN` are open at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time

HOLD_S = 6.0  # a listener is closed this long after it opened, if nobody connected
MAX_OPEN = 32
_open: set[asyncio.Task[None]] = set()


class ListenRefused(Exception):
    """No listener now: too many open, or the address cannot be bound (the message says)."""


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _why(error: OSError) -> str:
    return os.strerror(error.errno).lower() if error.errno else str(error)


async def open_listener(host: str, hold_s: float = HOLD_S) -> tuple[str, str]:
    """Listen on ``host`` at a free port; return ``(host:port, token)``. The listener
    greets its first connection with the token, then closes (or after ``hold_s``)."""
    if len(_open) >= MAX_OPEN:
        raise ListenRefused(f"{MAX_OPEN} probe listeners are open already; try again")
    token = secrets.token_hex(16)
    greeted = asyncio.Event()

    async def greet(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(token.encode() + b"\n")
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            greeted.set()

    try:
        server = await asyncio.start_server(greet, host, 0)
    except OSError as e:
        raise ListenRefused(f"cannot listen on {host}: {_why(e)}") from e
    port = int(server.sockets[0].getsockname()[1])

    async def close_later() -> None:
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(greeted.wait(), hold_s)
        finally:
            server.close()

    task = asyncio.create_task(close_later(), name=f"probe-listener-{port}")
    _open.add(task)
    task.add_done_callback(_open.discard)
    return host_port(host, port), token


async def reach_listener(address: str, token: str, timeout: float) -> tuple[bool, float, str]:
    """Connect to a probe listener and read its greeting: ``(reached, latency_ms, why not)``."""
    host, port = split(address)
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        ms = (time.monotonic() - started) * 1000
        return False, ms, f"no answer in {timeout:.0f} s (packets dropped on the way?)"
    except OSError as e:
        return False, (time.monotonic() - started) * 1000, _why(e)
    latency = (time.monotonic() - started) * 1000
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (TimeoutError, OSError):
        line = b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if line.strip() != token.encode():
        return False, latency, "something else answered on that port, not the probe listener"
    return True, latency, ""
