"""VM consoles over the API's websocket, against agents served for real with sim drivers:
bytes both ways, any agent forwarding to the owner, the console following the VM to another
node, and who may open one (operators, not readers; a token by header, subprotocol or the
dashboard's cookie from its own origin)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIWebSocketRoute
from starlette.routing import WebSocketRoute
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from hvcluster.api import consoles, create_app
from hvcluster.api.auth import SESSION_COOKIE, TOKEN_SUBPROTOCOL
from hvcluster.api.console_bridge import UnixBackend
from hvcluster.models.base import encode
from hvcluster.models.lifecycle import VMState
from hvcluster.models.token import Role
from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import stored_events
from tests.api.console_agents import KEYS, ConsoleAgents, console_agents
from tests.tokens import auth, make_token
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(
            record.getMessage() + (f": {record.exc_info[1]!r}" if record.exc_info else "")
        )


@pytest.fixture
async def agents(store: MemoryStore, tmp_path: Path) -> AsyncIterator[ConsoleAgents]:
    """Two agents; what their servers log as errors fails the test. (Every refused
    handshake was answered twice, the second raising in the server and logged there.)"""
    errors = Records()
    server_log = logging.getLogger("uvicorn.error")  # (uvicorn sets it up as it starts)
    async with console_agents(store, tmp_path, "n1", "n2") as a:
        server_log.addHandler(errors)
        try:
            yield a
        finally:
            server_log.removeHandler(errors)
    assert not errors.seen, f"the agents' servers logged errors: {errors.seen}"


@pytest.fixture
async def operator(store: MemoryStore) -> str:
    return await make_token(store, KEYS, "ops", Role.OPERATOR)


@contextlib.asynccontextmanager
async def opened(url: str, **options: object) -> AsyncIterator[ClientConnection]:
    async with connect(url, proxy=None, open_timeout=5, **options) as ws:  # type: ignore[arg-type]
        yield ws


async def read_until(ws: ClientConnection, marker: bytes, timeout: float = 10) -> bytes:
    seen = b""
    async with asyncio.timeout(timeout):
        while marker not in seen:
            message = await ws.recv()
            seen += message if isinstance(message, bytes) else message.encode()
    return seen


async def until_closed(ws: ClientConnection) -> None:
    """Read (and drop) what comes until the server closes the websocket."""
    async with asyncio.timeout(10):
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()


async def refused(url: str, **options: object) -> tuple[int, bytes]:
    with pytest.raises(InvalidStatus) as e:
        async with opened(url, **options):
            pass
    return e.value.response.status_code, bytes(e.value.response.body)


async def test_serial_console_on_the_owner_and_through_another_agent(
    agents: ConsoleAgents, store: MemoryStore, operator: str
) -> None:
    await agents.create_vm("web", "n1")
    for via in ("n1", "n2"):  # n1 runs it; n2 forwards to n1
        async with opened(agents.url(via, "web"), additional_headers=auth(operator)) as ws:
            await ws.send(b"echo hello from " + via.encode() + b"\r")
            said = await read_until(ws, b"web:/# ")
            assert b"\r\nhello from " + via.encode() + b"\r\n" in said
            await ws.send("echo as text\r")  # text messages are typed too (xterm.js sends them)
            assert b"as text\r\n" in await read_until(ws, b"web:/# ")
    logged = [e for e in await stored_events(store) if e.kind == "vm.console"]
    assert len(logged) == 2  # one each, not one per hop
    assert {(e.subject, e.actor) for e in logged} == {
        ("vm/web", "token:ops@n1"),
        ("vm/web", "token:ops@n2"),
    }


async def test_the_serial_console_follows_the_vm_to_another_node(
    agents: ConsoleAgents, operator: str
) -> None:
    spec = await agents.create_vm("web", "n1")
    async with opened(agents.url("n1", "web"), additional_headers=auth(operator)) as ws:
        await ws.send(b"echo before\r")
        await read_until(ws, b"before\r\nweb:/# ")
        await agents.migrate(spec, "n1", "n2", epoch=2)
        said = await read_until(ws, b"[hvc: the console of web on n2]\r\n")
        assert b"waiting for the VM to run" in said
        await ws.send(b"hostname\r")
        await read_until(ws, b"\r\nweb\r\nweb:/# ")
        assert [i.name for i in await agents.drivers["n2"].list()] == ["web"]
        assert await agents.drivers["n1"].list() == [] or all(
            i.state is not VMState.RUNNING for i in await agents.drivers["n1"].list()
        )
        # The owner changes again, now under a console forwarded from n1 to n2.
        await agents.migrate(spec, "n2", "n1", epoch=3)
        await read_until(ws, b"[hvc: the console of web on n1]\r\n")
        await ws.send(b"echo back home\r")
        await read_until(ws, b"back home\r\nweb:/# ")


async def test_a_stopped_vm_ends_its_console(agents: ConsoleAgents, operator: str) -> None:
    spec = await agents.create_vm("web", "n1")
    async with opened(agents.url("n2", "web"), additional_headers=auth(operator)) as ws:
        await ws.send(b"\r")
        await read_until(ws, b"web:/# ")
        stopped = spec.model_copy(update={"desired_state": "stopped"})
        await agents.store.put(KEYS.vm("web"), encode(stopped))
        await agents.drivers["n1"].kill("web")
        await agents.report(spec, "n1", 1, VMState.STOPPED)
        await until_closed(ws)
        assert ws.close_code == consoles.CLOSE_ENDED
        assert "stopped" in (ws.close_reason or "")
    status, body = await refused(agents.url("n1", "web"), additional_headers=auth(operator))
    assert status == 409 and b"stopped" in body


async def test_vnc_greets_and_asks_the_client_to_reconnect_after_a_move(
    agents: ConsoleAgents, operator: str
) -> None:
    spec = await agents.create_vm("web", "n1")
    options = {"additional_headers": auth(operator), "subprotocols": ["binary"]}
    async with opened(agents.url("n2", "web", "vnc"), **options) as ws:
        assert ws.subprotocol == "binary"
        assert await read_until(ws, b"\n") == b"RFB 003.008\n"
        await agents.migrate(spec, "n1", "n2", epoch=2)
        await until_closed(ws)
        assert ws.close_code == consoles.CLOSE_MOVED
        assert ws.close_reason == "vm web runs on n2: reconnect"
    async with opened(agents.url("n1", "web", "vnc"), **options) as ws:  # the reconnection
        assert await read_until(ws, b"\n") == b"RFB 003.008\n"
    async with opened(agents.url("n1", "web", "vnc"), **options) as again:  # and a second
        assert await read_until(again, b"\n") == b"RFB 003.008\n"


async def test_one_serial_user_at_a_time(agents: ConsoleAgents, operator: str) -> None:
    await agents.create_vm("web", "n1")
    async with opened(agents.url("n1", "web"), additional_headers=auth(operator)) as ws:
        await ws.send(b"\r")
        await read_until(ws, b"web:/# ")
        status, body = await refused(agents.url("n2", "web"), additional_headers=auth(operator))
        assert status == 409 and b"in use by token:ops@n1" in body
    async with opened(agents.url("n2", "web"), additional_headers=auth(operator)) as ws:
        await ws.send(b"\r")
        await read_until(ws, b"web:/# ")  # free again once the first left


async def test_consoles_open_at_once_are_bounded(agents: ConsoleAgents, operator: str) -> None:
    await agents.create_vm("web", "n1")
    agents.apps["n2"].state.consoles.max_open = 1
    vnc = agents.url("n2", "web", "vnc")
    async with opened(vnc, additional_headers=auth(operator)) as ws:
        await read_until(ws, b"\n")
        status, body = await refused(vnc, additional_headers=auth(operator))
        assert status == 503 and b"1 consoles are open on n2 already" in body

    async def greeted_again() -> bool:  # the slot is freed once the server saw it close
        async with opened(vnc, additional_headers=auth(operator)) as ws:
            return await read_until(ws, b"\n") == b"RFB 003.008\n"

    await wait_for(greeted_again, 5, "a console once the first closed", tolerate=(InvalidStatus,))


async def test_a_revoked_token_ends_its_open_console(
    agents: ConsoleAgents, store: MemoryStore
) -> None:
    await agents.create_vm("web", "n1")
    for node in ("n1", "n2"):
        agents.apps[node].state.consoles.recheck_s = 0.1
    admin = await make_token(store, KEYS)
    brief = await make_token(store, KEYS, "brief", Role.OPERATOR)
    async with opened(agents.url("n2", "web"), additional_headers=auth(brief)) as ws:
        await ws.send(b"\r")
        await read_until(ws, b"web:/# ")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{agents.ports['n1']}") as api:
            r = await api.delete("/api/v1/tokens/brief", headers=auth(admin))
            assert r.status_code == 200, r.text
        await until_closed(ws)
        assert ws.close_code == consoles.CLOSE_REVOKED
        assert "'brief' is unknown, revoked" in (ws.close_reason or "")


async def test_who_may_open_a_console(
    agents: ConsoleAgents, store: MemoryStore, operator: str
) -> None:
    await agents.create_vm("web", "n1")
    reader = await make_token(store, KEYS, "looker", Role.READER)
    for node in ("n1", "n2"):
        status, body = await refused(agents.url(node, "web"), additional_headers=auth(reader))
        assert status == 403 and b"needs the operator role" in body
        status, body = await refused(agents.url(node, "web"))
        assert status == 401 and b"no API token" in body
    status, _ = await refused(agents.url("n1", "nope"), additional_headers=auth(operator))
    assert status == 404
    spice = agents.url("n1", "web", "spice")
    status, body = await refused(spice, additional_headers=auth(operator))
    assert status == 422 and b"kind" in body

    # A browser: its token as a subprotocol (never echoed back), or the dashboard's cookie
    # from a page of the agent's own origin.
    protocols = ["hvc.console", TOKEN_SUBPROTOCOL + operator]
    async with opened(agents.url("n2", "web"), subprotocols=protocols) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "hvc.console"
        await ws.send(b"\r")
        await read_until(ws, b"web:/# ")
    status, _ = await refused(
        agents.url("n2", "web"),
        subprotocols=[TOKEN_SUBPROTOCOL + reader],  # type: ignore[list-item]
    )
    assert status == 403
    host = f"127.0.0.1:{agents.ports['n1']}"
    cookie = {"Cookie": f"{SESSION_COOKIE}={operator}"}
    async with opened(
        agents.url("n1", "web"), additional_headers=cookie, origin=f"http://{host}"
    ) as ws:
        await ws.send(b"\r")
        await read_until(ws, b"web:/# ")
    status, body = await refused(
        agents.url("n1", "web"), additional_headers=cookie, origin="https://evil.example"
    )
    assert status == 401 and b"another origin" in body


def websocket_paths(router: object, prefix: str = "") -> list[str]:
    """Every websocket route's path under ``router`` (an app's, or one it includes)."""
    found = []
    for route in getattr(router, "routes", ()):
        if isinstance(route, APIWebSocketRoute | WebSocketRoute):
            found.append(prefix + route.path)
        included = getattr(route, "original_router", None)
        if included is not None:
            found += websocket_paths(included, prefix + route.include_context.prefix)
    return found


async def test_no_websocket_route_skips_the_token(
    agents: ConsoleAgents, store: MemoryStore
) -> None:
    """Whatever websocket routes the app has: none opens without a token, none for a
    reader (the app-wide dependency applies to websockets too)."""
    await agents.create_vm("web", "n1")
    paths = websocket_paths(create_app(store, KEYS, "n1").router)
    assert paths == ["/api/v1/vms/{name}/console/{kind}"]
    reader = await make_token(store, KEYS, "looker", Role.READER)
    base = f"ws://127.0.0.1:{agents.ports['n1']}"
    for path in paths:
        url = base + path.replace("{name}", "web").replace("{kind}", "serial")
        for headers, status in (({}, 401), (auth(reader), 403)):
            assert (await refused(url, additional_headers=headers))[0] == status, (path, headers)


async def test_a_slow_client_loses_old_serial_output_not_the_guest(tmp_path: Path) -> None:
    """The guest's output is always read at once: beyond the backlog the oldest is dropped,
    so a console nobody reads never makes the guest wait on its serial port."""
    path = tmp_path / "s.sock"
    written = asyncio.Event()

    async def guest(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in range(200):
            writer.write(f"{i:09d}\n".encode() * 100)  # 1000 bytes each
            await writer.drain()  # would block for ever if nobody read
        written.set()
        writer.close()

    server = await asyncio.start_unix_server(guest, path)
    backend = await UnixBackend.open(path, drop_beyond=10_000)
    try:
        async with asyncio.timeout(10):
            await written.wait()
        seen = b""
        while chunk := await backend.read():
            seen += chunk
        assert backend.dropped > 0 and len(seen) <= 10_000 + 64 * 1024
        assert seen.endswith(b"000000199\n"), "the newest output is kept"
    finally:
        await backend.close()
        server.close()
