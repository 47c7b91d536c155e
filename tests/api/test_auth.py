"""Tokens and roles on every route: 401 without a valid token, 403 below the route's role,
allowed at or above it; tokens made, listed and revoked; events name the token."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from hvcluster.api import create_app
from hvcluster.models.event import Event
from hvcluster.models.token import Role
from hvcluster.store.events import EventLog
from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import KEYS, spec, stored_events
from tests.tokens import auth, make_token
from tests.validate.agents import Agents

PREFIX = "/api/v1"
# What each route needs, said here independently of api/auth.py: reads need a reader, writes
# an operator, except these areas (admin; tokens even to read) and these exceptions.
ADMIN_AREAS = ("/tokens", "/volumes", "/switches", "/cluster")
# Open routes, with what they answer here without a token: the CA (none in this store), and
# the join routes (the join token in the body is their credential; an empty body is no
# request at all).
OPEN = {
    ("GET", "/healthz"): 200,
    ("GET", "/cluster/ca"): 409,
    ("POST", "/join"): 422,
    ("POST", "/join/promote"): 422,
}
READER_WRITES = {("POST", "/probe/listen")}
PARAMS = {"/events/follow": {"since": 1, "count": 1}}  # ends after the one stored event
OUTSIDE_PREFIX = {"/metrics"}  # where Prometheus looks, not under /api/v1


def expected_role(method: str, path: str) -> Role | None:
    if (method, path) in OPEN:
        return None
    if path.startswith("/tokens"):
        return Role.ADMIN
    if method == "GET" or (method, path) in READER_WRITES:
        return Role.READER
    return Role.ADMIN if path.startswith(ADMIN_AREAS) else Role.OPERATOR


def routes() -> list[tuple[str, str]]:
    """Every method and path the app's OpenAPI document lists."""
    schema = create_app(MemoryStore(), KEYS, "n1").openapi()
    return sorted(
        (method.upper(), path.removeprefix(PREFIX))
        for path, ops in schema["paths"].items()
        for method in ops
    )


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


@pytest.fixture
async def bearers(store: MemoryStore) -> dict[Role, str]:
    return {role: await make_token(store, KEYS, f"as-{role.value}", role) for role in Role}


@pytest.fixture
async def raw(store: MemoryStore) -> AsyncIterator[httpx.AsyncClient]:
    """A client of n1's API without any token; one event is in the log."""
    await EventLog(store, KEYS).append(Event(time=time.time(), kind="test.mark"))
    transport = httpx.ASGITransport(app=create_app(store, KEYS, "n1"))
    async with httpx.AsyncClient(transport=transport, base_url=f"http://api{PREFIX}") as client:
        yield client


async def call(
    client: httpx.AsyncClient, method: str, path: str, bearer: str | None
) -> httpx.Response:
    headers = auth(bearer) if bearer else {}
    body = {} if method in ("POST", "PUT", "PATCH") else None
    url = f"http://api{path}" if path in OUTSIDE_PREFIX else concrete(path)
    return await client.request(method, url, json=body, headers=headers, params=PARAMS.get(path))


def test_the_route_list_is_read() -> None:
    found = routes()
    assert ("GET", "/vms") in found and ("DELETE", "/tokens/{name}") in found
    assert len(found) > 30


@pytest.mark.parametrize(("method", "path"), routes())
async def test_every_route_checks_the_token_and_its_role(
    raw: httpx.AsyncClient, bearers: dict[Role, str], method: str, path: str
) -> None:
    needed = expected_role(method, path)
    anonymous = await call(raw, method, path, None)
    if needed is None:
        assert anonymous.status_code == OPEN[method, path], anonymous.text
        return
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    below = needed.below()
    if below is not None:
        refused = await call(raw, method, path, bearers[below])
        assert refused.status_code == 403, refused.text
        assert f"needs the {needed.value} role" in refused.json()["error"]
    for role in Role:
        if role.allows(needed):
            allowed = await call(raw, method, path, bearers[role])
            assert allowed.status_code not in (401, 403), (role, allowed.text)
            assert allowed.status_code < 500, (role, allowed.text)


async def test_refused_requests_change_nothing(
    raw: httpx.AsyncClient, store: MemoryStore, bearers: dict[Role, str]
) -> None:
    before = await store.revision()
    assert (await raw.post("/vms", json=spec("web-1"))).status_code == 401
    r = await raw.post("/vms", json=spec("web-1"), headers=auth(bearers[Role.READER]))
    assert r.status_code == 403
    body = {"name": "csv1", "path": "/srv/csv1"}
    r = await raw.post("/volumes", json=body, headers=auth(bearers[Role.OPERATOR]))
    assert r.status_code == 403
    assert "admin" in r.json()["error"]
    assert await store.revision() == before


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Basic YWRtaW46YWRtaW4=", "Bearer nodot", "Bearer as-admin.s3cr3t", "Bearer .x"],
)
async def test_bad_credentials_get_401(
    raw: httpx.AsyncClient, bearers: dict[Role, str], header: str
) -> None:
    r = await raw.get("/vms", headers={"Authorization": header} if header else {})
    assert r.status_code == 401, r.text
    assert r.json()["error"]
    assert "s3cr3t" not in r.text  # a presented secret is never echoed


async def test_tokens_made_listed_used_and_revoked(
    api: httpx.AsyncClient, store: MemoryStore, raw: httpx.AsyncClient
) -> None:
    r = await api.post("/tokens", json={"name": "alice", "role": "operator"})
    assert r.status_code == 201, r.text
    made = r.json()
    alice = made["token"]
    assert made["role"] == "operator" and made["created_by"] == "token:test-admin@n1"

    # stored hashed: the secret is nowhere in the store, its SHA-256 is
    kv = await store.get(KEYS.token("alice"))
    assert kv is not None
    secret = alice.split(".", 1)[1]
    assert secret.encode() not in kv.value
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in kv.value

    listed = (await api.get("/tokens")).json()["tokens"]
    assert {t["name"]: t["role"] for t in listed} == {"test-admin": "admin", "alice": "operator"}
    assert secret not in str(listed)

    # it works, and what it does is logged as alice
    created = await raw.post("/vms", json=spec("web-1"), headers=auth(alice))
    assert created.status_code == 201, created.text
    [event] = [e for e in await stored_events(store) if e.kind == "vm.created"]
    assert event.actor == "token:alice@n1"

    assert (await api.post("/tokens", json={"name": "alice", "role": "reader"})).status_code == 409
    r = await api.delete("/tokens/alice")
    assert r.status_code == 200, r.text
    refused = await raw.get("/vms", headers=auth(alice))
    assert refused.status_code == 401
    assert "revoked" in refused.json()["error"]
    assert [e.kind for e in await stored_events(store) if e.kind.startswith("token.")] == [
        "token.created",
        "token.revoked",
    ]
    assert (await api.delete("/tokens/alice")).status_code == 404


async def test_an_expired_token_is_refused(
    api: httpx.AsyncClient, store: MemoryStore, raw: httpx.AsyncClient
) -> None:
    old = await make_token(store, KEYS, "old", Role.ADMIN, expires_at=time.time() - 1)
    r = await raw.get("/vms", headers=auth(old))
    assert r.status_code == 401 and "expired" in r.json()["error"]
    made = await api.post("/tokens", json={"name": "brief", "role": "reader", "expires_in_s": 60})
    assert made.status_code == 201
    assert made.json()["expires_at"] == pytest.approx(time.time() + 60, abs=10)
    listed = {t["name"]: t["expired"] for t in (await api.get("/tokens")).json()["tokens"]}
    assert listed["old"] is True and listed["brief"] is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Bad_Name", "role": "reader"}, "name"),
        ({"name": "ok", "role": "root"}, "role"),
        ({"name": "ok", "role": "reader", "expires_in_s": -5}, "expires_in_s"),
        ('{"name": "ok", "role": "reader", "expires_in_s": 1e999}', "expires_in_s"),
    ],
)
async def test_a_bad_token_request_names_the_field(
    api: httpx.AsyncClient, body: dict[str, object] | str, field: str
) -> None:
    if isinstance(body, str):  # JSON that json.dumps would not write (an infinite number)
        headers = {"Content-Type": "application/json"}
        r = await api.post("/tokens", content=body, headers=headers)
    else:
        r = await api.post("/tokens", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field


async def test_the_last_admin_token_cannot_be_revoked(api: httpx.AsyncClient) -> None:
    r = await api.delete("/tokens/test-admin")
    assert r.status_code == 409 and "last valid admin token" in r.json()["error"]
    assert (await api.post("/tokens", json={"name": "root2", "role": "admin"})).status_code == 201
    assert (await api.delete("/tokens/test-admin")).status_code == 200


async def test_a_token_is_revoked_among_hundreds_of_admins(
    store: MemoryStore, api: httpx.AsyncClient
) -> None:
    """The revocation's guard does not grow with the number of admin tokens (etcd allows 128
    compares in a txn, and the memory store refuses more as etcd does)."""
    for i in range(200):
        await make_token(store, KEYS, f"admin-{i:03d}", Role.ADMIN)
    r = await api.delete("/tokens/admin-100")
    assert r.status_code == 200, r.text
    assert (await store.get(KEYS.token("admin-100"))) is None


async def test_validate_with_a_reader_token_asks_other_agents_with_it(
    store: MemoryStore, raw: httpx.AsyncClient
) -> None:
    """Agents ask each other with the caller's own token: a reader's validate passes the
    agent-to-agent and migration-port probes (n2 asks n1 to listen)."""
    reader = await make_token(store, KEYS, "viewer", Role.READER)
    agents = Agents(store, KEYS)
    try:
        await agents.add("n1")
        await agents.add("n2")
        r = await raw.get("/cluster/validate", headers=auth(reader), timeout=20)
        assert r.status_code == 200, r.text
        by = {c["name"]: c for c in r.json()["checks"]}
        for name in ("agent api n2 -> n1", "migration port n2 -> n1", "migration port n1 -> n2"):
            assert by[name]["status"] == "pass", by[name]
    finally:
        await agents.stop()
