"""Request limits: bodies bounded in size and time before any route reads them, numbers
finite and in range, fields bounded; each refused with a 4xx naming what was wrong, and
nothing written to the store. Plus the agent's HTTP server: a client that trickles its
request head is cut off, and the others are still served."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from hvcluster.api import create_app
from hvcluster.api.limits import MAX_BODY_BYTES, RequestLimits
from hvcluster.api.serving import MAX_HEAD_BYTES, HeadTimeoutH11Protocol, server_settings
from hvcluster.models.config import ClusterConfig
from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import KEYS, spec
from tests.waiting import wait_for

CHUNK = 64 * 1024


async def refused(
    api: httpx.AsyncClient, store: MemoryStore, body: bytes | dict[str, Any], status: int = 422
) -> dict[str, Any]:
    """POST ``body`` to /vms; it must be refused with ``status`` and change nothing."""
    before = await store.revision()
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = await api.post("/vms", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert await store.revision() == before
    answer: dict[str, Any] = r.json()
    return answer


# --- numbers: finite and in range ------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"name": "a", "disks": [{"path": "/d", "size_gib": 1e999}]}', "disks.0.size_gib"),
        (b'{"name": "a", "disks": [{"path": "/d", "size_gib": NaN}]}', "disks.0.size_gib"),
        (b'{"name": "a", "ha": {"failover_period_s": Infinity}}', "ha.failover_period_s"),
        (b'{"name": "a", "ha": {"failover_period_s": -1e999}}', "ha.failover_period_s"),
    ],
)
async def test_infinite_numbers_are_refused_naming_the_field(
    api: httpx.AsyncClient, store: MemoryStore, raw: bytes, field: str
) -> None:
    """JSON's 1e999 parses as infinity; it used to be accepted and stored as null."""
    answer = await refused(api, store, raw)
    assert answer["field"] == field
    assert "finite" in answer["error"] or "less than" in answer["error"]


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"disks": [{"path": "/d", "size_gib": 1e308}]}, "disks.0.size_gib"),
        ({"ha": {"failover_threshold": 10**30}}, "ha.failover_threshold"),
        ({"ha": {"failover_period_s": 1e300}}, "ha.failover_period_s"),
    ],
)
async def test_numbers_out_of_range_are_refused(
    api: httpx.AsyncClient, store: MemoryStore, over: dict[str, Any], field: str
) -> None:
    """``size_gib: 1e308`` used to be stored, and the agent's ``int(size_gib * GIB)`` then
    raised OverflowError."""
    answer = await refused(api, store, spec("a", **over))
    assert answer["field"] == field
    assert "less than or equal" in answer["error"]


def test_cluster_timings_are_finite_and_bounded() -> None:
    for bad in (float("inf"), float("nan"), 1e12):
        with pytest.raises(ValidationError, match="lease_ttl_s"):
            ClusterConfig(lease_ttl_s=bad)
    with pytest.raises(ValidationError, match="event_retention"):
        ClusterConfig(event_retention=10**12)
    with pytest.raises(ValidationError, match=r"migration\.timeout_s"):
        ClusterConfig.model_validate({"migration": {"timeout_s": 1e999}})


# --- field sizes -----------------------------------------------------------------------------
LONG = "x" * 5000


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"labels": {f"k{i}": "v" for i in range(65)}}, "labels"),
        ({"labels": {"k" * 64: "v"}}, "labels"),
        ({"labels": {"k": "v" * 256}}, "labels.k"),
        ({"disks": [{"path": f"/d{i}"} for i in range(65)]}, "disks"),
        ({"nics": [{"switch": "s", "mac": f"52:54:00:00:00:{i:02x}"} for i in range(33)]}, "nics"),
        ({"disks": [{"path": "/" + LONG}]}, "disks.0.path"),
        ({"boot": {"cmdline": LONG}}, "boot.cmdline"),
        ({"boot": {"kernel": "/" + LONG}}, "boot.kernel"),
        # a NUL reaches no program or system call (the agent's os calls raise ValueError)
        ({"disks": [{"path": "/srv/a\x00b"}]}, "disks.0.path"),
        ({"boot": {"cmdline": "console=ttyS0\nquit"}}, "boot.cmdline"),
        ({"boot": {"initrd": "/boot/\x7finitrd"}}, "boot.initrd"),
        ({"ha": {"preferred_owners": [f"n{i}" for i in range(65)]}}, "ha.preferred_owners"),
        ({"ha": {"possible_owners": [f"n{i}" for i in range(65)]}}, "ha.possible_owners"),
        ({"ha": {"anti_affinity_classes": [f"c{i}" for i in range(33)]}}, "ha"),
        ({"ha": {"anti_affinity_classes": ["c" * 64]}}, "ha.anti_affinity_classes.0"),
        ({"ha": {"start_group": LONG}}, "ha.start_group"),
        ({"ha": {"start_after": [f"g{i}" for i in range(33)]}}, "ha.start_after"),
    ],
)
async def test_oversized_fields_are_refused_naming_the_field(
    api: httpx.AsyncClient, store: MemoryStore, over: dict[str, Any], field: str
) -> None:
    answer = await refused(api, store, spec("a", **over))
    assert answer["field"].startswith(field), answer


async def test_thousands_of_bad_items_get_a_short_answer(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    """A body of thousands of bad items (well under the body limit) is answered with the
    first problems and a count, not with an answer larger than the request."""
    answer = await refused(api, store, spec("a", nics=[{"switch": "s"}] * 20_000))
    assert answer["field"] == "nics.0.mac", answer
    assert answer["error"].endswith("and 19990 more problems"), answer["error"][-200:]
    assert len(answer["error"]) < 2000


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/vms/a/move", {"target": "n2"}, "target"),  # the field is 'to': any node would do
        ("/vms/a/move-storage", {"volume": "csv2", "keep_old": True}, "keep_old"),
        ("/tokens", {"name": "t", "role": "reader", "expires_in": 3600}, "expires_in"),
        ("/volumes", {"name": "v", "path": "/srv/v", "mark": True}, "mark"),
    ],
)
async def test_a_misspelled_field_is_refused_not_ignored(
    api: httpx.AsyncClient, store: MemoryStore, path: str, body: dict[str, Any], field: str
) -> None:
    """A field the route does not know is refused naming it: ignored, 'expires_in' made a
    token that never expires, and 'target' moved a VM wherever the scheduler chose."""
    await api.post("/vms", json=spec("a"))
    before = await store.revision()
    r = await api.post(path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field, r.text
    assert await store.revision() == before


async def test_oversized_request_fields_of_other_routes(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    await api.post("/vms", json=spec("a"))
    before = await store.revision()
    cases = [
        ("/volumes", {"name": "v", "path": "/" + LONG}, "path"),
        ("/volumes", {"name": "v", "path": "/srv/\x00"}, "path"),
        ("/vms/a/move", {"to": LONG}, "to"),
        ("/vms/a/move", {"with_storage": LONG}, "with_storage"),
        ("/vms/a/move-storage", {"volume": LONG}, "volume"),
        ("/vms/a/stop", {"reason": LONG}, "reason"),
    ]
    for path, body, field in cases:
        r = await api.post(path, json=body)
        assert r.status_code == 422, (path, r.text)
        assert r.json()["field"] == field, (path, r.text)
    assert await store.revision() == before


# --- body size and time ----------------------------------------------------------------------
async def test_a_body_over_the_limit_is_refused_by_its_declared_length(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    """Refused before it is read; one just within the limit still reaches its route."""
    padding = " " * (MAX_BODY_BYTES - 100)
    body = json.dumps(spec("a")).encode() + padding.encode()
    assert len(body) <= MAX_BODY_BYTES
    r = await api.post("/vms", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 201, r.text
    answer = await refused(api, store, body + b" " * 200, status=413)
    assert answer["field"] == "body"
    assert "too large" in answer["error"] and str(MAX_BODY_BYTES) in answer["error"]


async def test_a_streamed_body_is_refused_once_it_passes_the_limit(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    """A chunked body (no Content-Length) of 300 MB: refused once it passes the limit,
    having been read no further than that (the stream is pulled only as the app reads)."""
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        yield b'{"name": "a", "labels": {"k": "'
        for _ in range(300 * 1024 * 1024 // CHUNK):
            pulled += CHUNK
            yield b"v" * CHUNK

    before = await store.revision()
    r = await api.post("/vms", content=body(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text[:200]
    assert r.json()["field"] == "body"
    assert pulled <= MAX_BODY_BYTES + CHUNK
    assert await store.revision() == before


async def test_a_body_that_does_not_arrive_in_time_is_answered_408() -> None:
    """A client trickling its body: the middleware gives up after its timeout, and the
    route is never called."""
    called = False

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal called
        called = True

    async def trickle() -> Message:
        await asyncio.sleep(0.05)
        return {"type": "http.request", "body": b"x", "more_body": True}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    limits = RequestLimits(app, body_timeout_s=0.5)
    scope: Scope = {"type": "http", "method": "POST", "path": "/api/v1/vms", "headers": []}
    await asyncio.wait_for(limits(scope, trickle, send), 10)
    assert not called
    assert sent[0]["status"] == 408
    answer = json.loads(sent[1]["body"])
    assert answer["field"] == "body" and "not received within 0.5 s" in answer["error"]


async def test_requests_beyond_those_in_progress_are_answered_503_unread() -> None:
    """At most ``max_in_progress`` requests are worked on; one more is answered 503 without
    its body being read. A request counts until its answer is all sent, an event stream
    only until it starts."""
    release = asyncio.Event()
    stream = [(b"content-type", b"text/event-stream")]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": stream})
        await release.wait()
        if scope["path"] != "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    limits = RequestLimits(app, max_in_progress=2)
    pulled: list[str] = []

    def call(path: str) -> tuple[asyncio.Task[None], list[Message]]:
        sent: list[Message] = []

        async def receive() -> Message:
            pulled.append(path)
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        scope: Scope = {"type": "http", "method": "POST", "path": path, "headers": []}
        return asyncio.create_task(limits(scope, receive, send)), sent

    first, _ = call("/a")
    streamed, stream_sent = call("/stream")
    await wait_for(lambda: stream_sent, 5, "the stream answering")
    assert stream_sent[0]["status"] == 200  # answering: no longer counted
    second, second_sent = call("/b")
    await wait_for(lambda: "/b" in pulled, 5, "the second request worked on")
    third, third_sent = call("/c")
    await asyncio.wait_for(third, 10)
    assert third_sent[0]["status"] == 503 and "/c" not in pulled
    assert "requests in progress" in json.loads(third_sent[1]["body"])["error"]
    release.set()
    await asyncio.wait_for(asyncio.gather(first, streamed, second), 10)
    assert second_sent[0]["status"] == 200
    fourth, fourth_sent = call("/d")
    await asyncio.wait_for(fourth, 10)
    assert fourth_sent[0]["status"] == 200 and limits.in_progress == 0


async def test_an_answer_goes_out_in_pieces_and_a_client_not_reading_is_given_up() -> None:
    """A 1 MiB answer is handed over 64 KiB at a time, each when the client took the last;
    one not taken in time ends the answer, and the request no longer counts."""
    big = b"x" * MAX_BODY_BYTES

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": big})

    limits = RequestLimits(app, send_timeout_s=0.5)
    pieces: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def slow_client(message: Message) -> None:
        if message["type"] == "http.response.body":
            if len(pieces) == 3:  # it stops reading
                await asyncio.sleep(3600)
            pieces.append(len(message["body"]))

    scope: Scope = {"type": "http", "method": "GET", "path": "/big", "headers": []}
    await asyncio.wait_for(limits(scope, receive, slow_client), 10)
    assert pieces == [64 * 1024] * 3
    assert limits.in_progress == 0

    pieces.clear()

    async def client(message: Message) -> None:
        if message["type"] == "http.response.body":
            pieces.append(len(message["body"]))

    await asyncio.wait_for(limits(scope, receive, client), 10)
    assert pieces == [64 * 1024] * 16 and limits.in_progress == 0


# --- the HTTP server: slow request heads, too many connections --------------------------------
class QuickHeadTimeout(HeadTimeoutH11Protocol):
    head_timeout_s = 0.5


class FewConnections(HeadTimeoutH11Protocol):
    max_connections = 3


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # leave the test runner's signals alone
        yield


@pytest.fixture
async def served(store: MemoryStore) -> AsyncIterator[int]:
    """The API over ``store`` served as an agent serves it, but with a shorter head timeout."""
    async with serve(store, QuickHeadTimeout) as port:
        yield port


@pytest.fixture
async def served_few(store: MemoryStore) -> AsyncIterator[int]:
    """The API over ``store`` served as an agent serves it, but holding 3 connections."""
    async with serve(store, FewConnections) as port:
        yield port


@contextlib.asynccontextmanager
async def serve(store: MemoryStore, protocol: type[HeadTimeoutH11Protocol]) -> AsyncIterator[int]:
    """Serve the API over ``store`` with uvicorn, the agent's settings but ``protocol``, on a
    free loopback port; stop it at the end."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    settings = {**server_settings(), "http": protocol}
    config = uvicorn.Config(
        create_app(store, KEYS, "n1"),
        host="127.0.0.1",
        port=port,
        log_level="error",
        lifespan="off",
        **settings,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:

        def started() -> bool:
            assert not task.done(), task
            return bool(server.started)

        await wait_for(started, 10, "the API server to start", every=0.01)
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """True once the server closes the connection (whatever it sent before), False if it
    is still open after ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def test_a_client_trickling_its_request_head_is_cut_off(served: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served)
    try:
        cut = False
        try:
            for byte in b"GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\n":
                writer.write(bytes([byte]))
                await writer.drain()
                if reader.at_eof():
                    break
                await asyncio.sleep(0.02)
        except ConnectionError:  # cut off while still trickling (a slow, loaded machine)
            cut = True
        assert cut or await _closed_by_server(reader, within=10)
    finally:
        writer.close()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served}/api/v1") as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_a_silent_connection_is_cut_off_and_a_kept_alive_one_too(served: int) -> None:
    silent_reader, silent = await asyncio.open_connection("127.0.0.1", served)
    kept_reader, kept = await asyncio.open_connection("127.0.0.1", served)
    try:
        kept.write(b"GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(kept_reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        kept.write(b"GET /api/v1/healthz HTTP/1.1\r\n")  # a second request, never finished
        assert await _closed_by_server(silent_reader, within=10)
        assert await _closed_by_server(kept_reader, within=10)
    finally:
        silent.close()
        kept.close()


async def test_connections_beyond_the_limit_are_closed_at_once(served_few: int) -> None:
    held = [await asyncio.open_connection("127.0.0.1", served_few) for _ in range(3)]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", served_few)
        try:
            assert await _closed_by_server(reader, within=5)
        finally:
            writer.close()
        held_reader, held_writer = held[0]
        held_writer.write(b"GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(held_reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200"), head
    finally:
        for _, w in held:
            w.close()


async def test_event_revisions_beyond_int64_are_refused(api: httpx.AsyncClient) -> None:
    """etcd's revisions are int64: a larger one is refused naming where it came from, not
    passed on to a watch that cannot ask for it."""
    for params, headers, field in (
        ({"since": 2**63}, {}, "since"),
        ({"after": 2**64}, {}, "after"),
        ({}, {"Last-Event-ID": str(2**63)}, "Last-Event-ID"),
    ):
        r = await asyncio.wait_for(api.get("/events/follow", params=params, headers=headers), 10)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == field


async def test_a_request_head_growing_past_16_kib_is_refused(served: int) -> None:
    """h11 holds at most that much of an unfinished head (a whole one read at once is
    parsed as it is: it was already read)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served)
    try:
        pad = b"a" * (MAX_HEAD_BYTES + 1024)
        writer.write(b"GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + pad)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 400"), head
        assert await _closed_by_server(reader, within=10)
    finally:
        writer.close()
