"""The dashboard's console page: offered to operators only (as the API's console websocket
is), and in a real browser (Debian's chromium, driven by Playwright) its xterm.js terminal
types into a VM's serial console and shows the answer, over the API's websocket with the
session cookie, through an agent that does not run the VM; noVNC reaches the graphical one."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from hvcluster.models.token import Role
from hvcluster.store.memory_store import MemoryStore
from hvcluster.web.app import install_dashboard
from tests.api.console_agents import KEYS, ConsoleAgents, console_agents
from tests.tokens import make_token

# a real browser (chromium) whose waits are real time: not on a core shared with other tests
pytestmark = [pytest.mark.timeout(90), pytest.mark.alone]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"


@pytest.fixture
async def agents(store: MemoryStore, tmp_path: Path) -> AsyncIterator[ConsoleAgents]:
    async with console_agents(store, tmp_path, "n1", "n2", setup=install_dashboard) as a:
        yield a


async def logged_in(agents: ConsoleAgents, node: str, role: Role) -> httpx.AsyncClient:
    bearer = await make_token(agents.store, KEYS, f"web-{role.value}", role)
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{agents.ports[node]}")
    r = await client.post("/ui/login", data={"token": bearer})
    assert r.status_code == 303, r.text
    return client


async def test_the_console_page_is_for_operators(agents: ConsoleAgents) -> None:
    await agents.create_vm("web", "n1")
    web = await logged_in(agents, "n2", Role.OPERATOR)
    try:
        assert 'id="console-link"' in (await web.get("/ui/vms/web")).text
        page = (await web.get("/ui/vms/web/console")).text
        assert "xterm.js" in page and "novnc/core/rfb.js" in page
        assert (await web.get("/ui/static/console.js")).status_code == 200
    finally:
        await web.aclose()
    web = await logged_in(agents, "n2", Role.READER)
    try:
        assert 'id="console-link"' not in (await web.get("/ui/vms/web")).text
        r = await web.get("/ui/vms/web/console")
        assert r.status_code == 403 and "needs the operator role" in r.text
    finally:
        await web.aclose()


def browse(url: str, token: str, move: Callable[[], None]) -> dict[str, Any]:
    """In chromium: log in, open the console page, type a line into the terminal, read the
    answer; connect the graphical console; ``move()`` the VM and see both consoles follow.
    What was seen, and a screenshot."""
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            said: list[str] = []
            page.on("console", lambda m: said.append(m.text))
            page.on("pageerror", lambda e: said.append(str(e)))
            page.set_default_timeout(20_000)
            page.goto(f"{url}/ui/login")
            page.fill("#token", token)
            page.click("#login")
            page.wait_for_url(re.compile(r"/ui/$"))
            page.goto(f"{url}/ui/vms/web")
            page.click("#console-link")
            page.wait_for_url(re.compile(r"/ui/vms/web/console$"))
            try:
                page.wait_for_function(
                    "document.getElementById('serial-status').textContent === 'connected'"
                )
            except sync_api.TimeoutError:
                status = page.inner_text("#serial-status")
                raise AssertionError(f"serial console: {status}; the page said {said}") from None
            page.keyboard.type("echo typed-in-the-browser")
            page.keyboard.press("Enter")
            lines = (
                "[0,1,2].map(i => window.hvcSerial.term.buffer.active.getLine(i)"
                ".translateToString(true))"
            )
            try:
                page.wait_for_function(f"{lines}[1] === 'typed-in-the-browser'")
            except sync_api.TimeoutError:
                raise AssertionError(f"the terminal shows {page.evaluate(lines)}; {said}") from None
            page.click("#vnc-connect")
            page.wait_for_function(
                "document.getElementById('vnc-status').textContent === 'connected'"
            )
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)
            first = page.evaluate(lines)

            move()  # the terminal is carried over; noVNC is closed, and the page reconnects it
            text = (
                "(() => { const b = window.hvcSerial.term.buffer.active; const out = [];"
                " for (let i = 0; i < b.length; i++)"
                " out.push(b.getLine(i).translateToString(true));"
                " return out.join('\\n'); })()"
            )
            page.wait_for_function(f"{text}.includes('[hvc: the console of web on n2]')")
            page.wait_for_function(
                "document.getElementById('vnc-status').textContent.startsWith('disconnected')"
            )
            page.wait_for_function(
                "document.getElementById('vnc-status').textContent === 'connected'"
            )
            return {"lines": first}
        finally:
            browser.close()


async def test_a_browser_types_into_the_serial_console(agents: ConsoleAgents) -> None:
    if not await asyncio.to_thread(CHROMIUM.exists):
        pytest.fail("chromium is not installed: run scripts/install")
    spec = await agents.create_vm("web", "n1")
    token = await make_token(agents.store, KEYS, "browser", Role.OPERATOR)
    loop = asyncio.get_running_loop()

    def move() -> None:  # from the browser's thread, on the agents' loop
        migrated = agents.migrate(spec, "n1", "n2", epoch=2)
        asyncio.run_coroutine_threadsafe(migrated, loop).result(10)

    seen = await asyncio.to_thread(browse, f"http://127.0.0.1:{agents.ports['n2']}", token, move)
    assert seen["lines"][:2] == ["echo typed-in-the-browser", "typed-in-the-browser"]
