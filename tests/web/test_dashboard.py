"""The dashboard in-process, over a MemoryStore: login with the API's tokens, pages drawn from
the API's reads, actions through the API's functions, roles and CSRF enforced on the server."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hvcluster.api import create_app
from hvcluster.models.base import encode
from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.models.token import Role
from hvcluster.models.usage import NodeUsage
from hvcluster.store.memory_store import MemoryStore
from hvcluster.web.app import install_dashboard
from hvcluster.web.session import COOKIE
from tests.api.conftest import KEYS, add_node, kinds, spec
from tests.tokens import auth, make_token

HX = {"HX-Request": "true"}


@pytest.fixture
async def web(store: MemoryStore) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client of n1 (cookies kept), not logged in; nodes n1 and n2 up."""
    app = create_app(store, KEYS, "n1")
    install_dashboard(app)
    await add_node(store, "n1")
    await add_node(store, "n2")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://n1") as client:
        yield client


async def login(web: httpx.AsyncClient, store: MemoryStore, role: Role) -> str:
    bearer = await make_token(store, KEYS, f"web-{role.value}", role)
    r = await web.post("/ui/login", data={"token": bearer})
    assert r.status_code == 303, r.text
    return bearer


async def test_root_sends_a_browser_to_the_dashboard_and_it_asks_for_a_token(
    web: httpx.AsyncClient,
) -> None:
    r = await web.get("/")
    assert (r.status_code, r.headers["location"]) == (303, "/ui/")
    r = await web.get("/ui/")
    assert (r.status_code, r.headers["location"]) == (303, "/ui/login")
    r = await web.get("/ui/frag/overview", headers=HX)  # a poll: htmx sends the page away
    assert (r.status_code, r.headers["hx-redirect"]) == (401, "/ui/login")
    assert 'name="token"' in (await web.get("/ui/login")).text


async def test_a_wrong_token_is_refused_with_the_apis_reason(
    web: httpx.AsyncClient, store: MemoryStore
) -> None:
    await make_token(store, KEYS, "alice", Role.ADMIN)
    r = await web.post("/ui/login", data={"token": "alice.wrong-secret"})
    assert r.status_code == 401
    assert "unknown, revoked, or its secret is wrong" in r.text
    assert COOKIE not in r.cookies


async def test_the_session_cookie_is_httponly_and_strict(
    web: httpx.AsyncClient, store: MemoryStore
) -> None:
    bearer = await make_token(store, KEYS, "bob", Role.READER)
    r = await web.post("/ui/login", data={"token": bearer})
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie


async def test_overview_shows_nodes_their_vms_and_the_capacity_line(
    web: httpx.AsyncClient, store: MemoryStore
) -> None:
    bearer = await login(web, store, Role.ADMIN)
    api = httpx.AsyncClient(
        transport=web._transport, base_url="http://n1/api/v1", headers=auth(bearer)
    )
    async with api:
        assert (await api.post("/vms", json=spec("web-1"))).status_code == 201
    page = (await web.get("/ui/")).text
    assert 'data-node="n1"' in page and 'data-node="n2"' in page
    assert 'data-vm="web-1"' in page  # not placed yet (no controller here): listed apart
    assert "Failover capacity: no HA VM is running" in page
    frag = (await web.get("/ui/frag/overview", headers=HX)).text
    assert "<html" not in frag and 'data-node="n1"' in frag


async def test_a_reader_sees_no_buttons_and_is_refused_an_action(
    web: httpx.AsyncClient, store: MemoryStore
) -> None:
    await login(web, store, Role.READER)
    page = (await web.get("/ui/nodes")).text
    assert "data-node" in page
    assert "<button hx-post" not in page and "Drain" not in page
    r = await web.post("/ui/act/nodes/n2/pause", headers=HX)
    assert r.status_code == 403
    assert "needs the operator role" in r.text
    assert "node.paused" not in await kinds(store)


async def test_an_operator_drains_and_resumes_a_node_through_the_api(
    web: httpx.AsyncClient, store: MemoryStore
) -> None:
    await login(web, store, Role.OPERATOR)
    page = (await web.get("/ui/nodes")).text
    assert 'hx-post="/ui/act/nodes/n2/drain"' in page
    r = await web.post("/ui/act/nodes/n2/drain", headers=HX)
    assert r.status_code == 200 and "n2: draining" in r.text
    assert "node.draining" in await kinds(store)
    frag = (await web.get("/ui/frag/nodes", headers=HX)).text
    assert re.search(r'data-node="n2".*?admin-draining', frag, re.S)
    r = await web.post("/ui/act/nodes/n2/resume", headers=HX, data={"failback": "none"})
    assert r.status_code == 200, r.text
    r = await web.post("/ui/act/nodes/n2/resume", headers=HX, data={"failback": "sometimes"})
    assert r.status_code == 422 and "failback" in r.text


async def test_the_apis_refusal_is_shown(web: httpx.AsyncClient, store: MemoryStore) -> None:
    bearer = await login(web, store, Role.OPERATOR)
    api = httpx.AsyncClient(
        transport=web._transport, base_url="http://n1/api/v1", headers=auth(bearer)
    )
    async with api:
        assert (await api.post("/vms", json=spec("db-1"))).status_code == 201
    r = await web.post("/ui/act/vms/db-1/move", headers=HX, data={"to": "n2", "kind": "live"})
    assert r.status_code == 409
    assert "db-1 is not running" in r.text
    r = await web.post("/ui/act/vms/db-1/stop", headers=HX)
    assert r.status_code == 200 and "stop requested" in r.text
    assert "desired: stopped" in (await web.get("/ui/frag/vms", headers=HX)).text


async def test_a_write_without_htmx_header_or_from_another_origin_is_refused(
    web: httpx.AsyncClient, store: MemoryStore
) -> None:
    await login(web, store, Role.ADMIN)
    r = await web.post("/ui/act/nodes/n2/pause")  # a plain cross-site form post
    assert r.status_code == 403 and "must come from one of" in r.text
    r = await web.post("/ui/act/nodes/n2/pause", headers={**HX, "Origin": "http://evil.example"})
    assert r.status_code == 403 and "another origin" in r.text
    assert "node.paused" not in await kinds(store)
    r = await web.post("/ui/act/nodes/n2/pause", headers={**HX, "Origin": "http://n1"})
    assert r.status_code == 200
    assert "node.paused" in await kinds(store)


async def test_a_revoked_token_ends_the_session(web: httpx.AsyncClient, store: MemoryStore) -> None:
    await login(web, store, Role.ADMIN)
    assert (await web.get("/ui/vms")).status_code == 200
    await store.delete(KEYS.token("web-admin"))
    r = await web.get("/ui/vms")
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login?why=")


async def test_events_filter_by_node_vm_and_kind(
    web: httpx.AsyncClient, store: MemoryStore
) -> None:
    await login(web, store, Role.OPERATOR)
    await web.post("/ui/act/nodes/n2/pause", headers=HX)
    await web.post("/ui/act/nodes/n1/pause", headers=HX)
    frag = (await web.get("/ui/frag/events?node=n2", headers=HX)).text
    assert 'data-subject="node/n2"' in frag and 'data-subject="node/n1"' not in frag
    frag = (await web.get("/ui/frag/events?kind=vm.", headers=HX)).text
    assert "no event matches" in frag


async def test_missing_browser_libraries_are_said(store: MemoryStore, tmp_path: Path) -> None:
    """The page names what is missing and how to get it (an empty vendor folder here)."""
    app = create_app(store, KEYS, "n1")
    install_dashboard(app, vendor_dir=tmp_path)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://n1") as web:
        await login(web, store, Role.READER)
        page = (await web.get("/ui/")).text
    assert 'id="missing-libraries"' in page and "scripts/install" in page
    assert "htmx.org/dist/htmx.min.js" in page and "does not update" in page


async def test_a_node_card_shows_its_state(web: httpx.AsyncClient, store: MemoryStore) -> None:
    await add_node(store, "n3", alive=False, admin=NodeAdminState.PAUSED)
    await login(web, store, Role.READER)
    page = (await web.get("/ui/")).text
    assert re.search(r'data-node="n3".*?not alive.*?admin-paused', page, re.S)


async def test_a_node_shows_its_measured_cpu_use(
    web: httpx.AsyncClient, store: MemoryStore
) -> None:
    usage = NodeUsage(node="n1", at=time.time(), window_s=300, host_cores=3.4)
    await store.put(KEYS.usage("n1"), encode(usage))  # what n1's agent publishes
    await login(web, store, Role.READER)
    for page in ((await web.get("/ui/")).text, (await web.get("/ui/nodes")).text):
        found = re.search(r'data-cpu-use="n1" title="([^"]*)".*?CPU use (\d+) %', page, re.S)
        assert found is not None, page
        assert found.group(2) == "85"  # 3.4 of 4 cores
        assert "3.4 of 4 cores busy, averaged over 300 s" in found.group(1)
        assert 'data-cpu-use="n2"' not in page  # not measured yet: no figure, not 0 %


async def test_validate_runs_the_apis_checks_failures_first(
    web: httpx.AsyncClient, store: MemoryStore
) -> None:
    await login(web, store, Role.READER)
    frag = (await web.get("/ui/frag/validate", headers=HX)).text
    assert 'id="validate-summary"' in frag
    results = re.findall(r'<tr class="check-(\w+)">', frag)
    assert results and "fail" in results  # the memory store has no etcd members to ask
    assert results == sorted(results, key=["fail", "warn", "pass"].index)


async def test_over_https_the_cookie_is_secure(store: MemoryStore) -> None:
    app = create_app(store, KEYS, "n1")
    install_dashboard(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://n1") as web:
        bearer = await make_token(store, KEYS, "carol", Role.READER)
        r = await web.post("/ui/login", data={"token": bearer})
        assert r.status_code == 303
        assert "secure" in r.headers["set-cookie"].lower()
        assert (await web.get("/ui/")).status_code == 200
