"""The web dashboard in a real browser (Debian's chromium, driven by Playwright) against a
real lab: three agents, real QEMU guests. A person logs in with the lab's admin token, sees
the nodes and their VMs, drains a node and watches its VMs arrive elsewhere, watches a
failover arrive in the live event list, all without reloading; a reader sees no buttons and
is refused an action made by hand. Screenshots go to ``test-artifacts/dashboard/``
(gitignored)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.lab.conftest import Lab, wait_for
from tests.lab.test_qemu_failover import create_guest, running

T = TypeVar("T")
pytestmark = [pytest.mark.lab, pytest.mark.qemu, pytest.mark.timeout(300)]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
GUESTS = {"dash-a": "n1", "dash-b": "n1", "dash-c": "n2"}  # name -> preferred node
SLOW_MS = 90_000  # a drain moves two guests live, one at a time under load: well within


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium, headless, closed after the module even when a test failed. Playwright's own
    browser download cannot work here: the distribution's chromium is driven instead."""
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail("playwright is not installed: run scripts/install (the dev extras)")
    if not CHROMIUM.exists():
        pytest.fail("chromium is not installed: run scripts/install")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def guests(qemu_lab: Lab) -> dict[str, str]:
    """Three running guests: two on n1, one on n2."""
    for name, home in GUESTS.items():
        create_guest(qemu_lab, name, home)
    for name in GUESTS:
        wait_for(lambda name=name: running(qemu_lab, name), 120, f"{name} running")
    return GUESTS


def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in another thread: Playwright's sync API keeps an event loop running in
    this one, and the lab's faults and restarts use ``asyncio.run``."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def logged_in(browser: Any, lab: Lab, token: str) -> Any:
    """A new browser context (its own cookies) whose page has logged in with ``token``."""
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 860})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto(f"{lab.api()}/")
    assert page.url.endswith("/ui/login"), page.url  # / sends a stranger to the login
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_url(re.compile(r"/ui/$"))
    assert not page.locator("#missing-libraries").count(), page.inner_text("#missing-libraries")
    return page


def mark_page(page: Any) -> None:
    """A marker that a reload would wipe: its presence later proves the page was not reloaded."""
    page.evaluate("window.__stillTheSamePage = true")


def not_reloaded(page: Any) -> bool:
    return bool(page.evaluate("window.__stillTheSamePage === true"))


def test_admin_sees_nodes_and_vms_and_drains_a_node_live(
    browser: Any, qemu_lab: Lab, guests: dict[str, str]
) -> None:
    page = logged_in(browser, qemu_lab, qemu_lab.state.token)
    try:
        for node in ("n1", "n2", "n3"):
            card = page.locator(f'article.card[data-node="{node}"]')
            assert card.count() == 1
            assert "alive" in card.inner_text()
        for name, home in guests.items():
            page.wait_for_selector(f'article[data-node="{home}"] li[data-vm="{name}"]')
        assert "N+1 holds" in page.inner_text("#capacity")
        shot(page, "overview")

        page.click('nav a[href="/ui/nodes"]')
        page.wait_for_selector('tr[data-node="n1"] button[data-action="drain"]')
        mark_page(page)
        page.once("dialog", lambda dialog: dialog.accept())
        page.click('tr[data-node="n1"] button[data-action="drain"]')
        page.wait_for_selector("#flash .ok")
        assert "n1: draining" in page.inner_text("#flash")
        page.wait_for_selector(
            'tr[data-node="n1"] .admin-draining, tr[data-node="n1"] .admin-paused'
        )
        shot(page, "nodes-draining")
        # The drained VMs appear on the other nodes, and n1 ends paused and empty: all seen
        # through the page's own polling.
        for name in ("dash-a", "dash-b"):
            page.wait_for_selector(
                f'tr[data-node="n2"] a[data-vm="{name}"], tr[data-node="n3"] a[data-vm="{name}"]',
                timeout=SLOW_MS,
            )
        page.wait_for_selector('tr[data-node="n1"] .admin-paused', timeout=SLOW_MS)
        assert page.locator('tr[data-node="n1"] a[data-vm]').count() == 0
        assert not_reloaded(page)
        shot(page, "nodes-drained")
        for name in ("dash-a", "dash-b"):
            vm = qemu_lab.vm(name)
            assert vm["node"] in ("n2", "n3") and vm["state"] == "running", vm

        page.select_option("#failback", "none")  # the guests stay where the drain put them
        page.click('tr[data-node="n1"] button[data-action="resume"]')
        page.wait_for_function(
            "document.querySelector('#flash').innerText.includes('resumed')"
            " || document.querySelector('#flash .error') !== null"
        )
        assert "n1: resumed" in page.inner_text("#flash"), page.inner_text("#flash")
        page.wait_for_selector('tr[data-node="n1"] .admin-up')
        assert not_reloaded(page)
    finally:
        page.context.close()


def test_an_operator_moves_a_vm_live_from_its_page_and_runs_validate(
    browser: Any, qemu_lab: Lab, guests: dict[str, str]
) -> None:
    made = httpx.post(
        f"{qemu_lab.api()}/api/v1/tokens",
        json={"name": "dash-operator", "role": "operator"},
        headers=qemu_lab.headers,
        verify=qemu_lab.ca,
        timeout=10,
    )
    assert made.status_code == 201, made.text
    page = logged_in(browser, qemu_lab, made.json()["token"])
    try:
        vm = "dash-a"
        source = qemu_lab.vm(vm)["node"]
        target = next(n for n in ("n1", "n2", "n3") if n != source)
        page.goto(f"{qemu_lab.api()}/ui/vms/{vm}")
        assert page.inner_text("#vm-node") == source
        mark_page(page)
        page.select_option("#move-to", target)
        page.select_option("#move-kind", "live")
        page.click('#move-form button[type="submit"]')
        page.wait_for_selector("#flash .ok")
        assert f"{vm}: move requested" in page.inner_text("#flash")
        page.wait_for_function(
            f"document.querySelector('#vm-node').innerText.trim() === '{target}'",
            timeout=SLOW_MS,
        )
        page.wait_for_selector("#vm-state .state-running")
        assert not_reloaded(page)
        moves = page.inner_text("#vm-migrations")
        assert re.search(rf"{source}\s+{target}\s+live\s+done", moves), moves
        shot(page, "vm-moved")
        # A move to where it runs is refused with the API's own reason; then back it goes.
        page.select_option("#move-to", target)
        page.click('#move-form button[type="submit"]')
        page.wait_for_selector("#flash .error")
        assert f"already runs on {target}" in page.inner_text("#flash")
        page.select_option("#move-to", source)
        page.click('#move-form button[type="submit"]')
        page.wait_for_selector("#flash .ok")
        page.wait_for_function(
            f"document.querySelector('#vm-node').innerText.trim() === '{source}'",
            timeout=SLOW_MS,
        )

        page.click('nav a[href="/ui/validate"]')
        page.click("#run-validate")
        page.wait_for_selector("#validate-summary", timeout=60_000)
        assert "checks by" in page.inner_text("#validate-summary")
        assert page.locator("#validate-table tr.check-pass").count() > 0
        shot(page, "validate")
    finally:
        page.context.close()


def test_a_killed_node_s_failover_arrives_in_the_live_event_list(
    browser: Any, qemu_lab: Lab, guests: dict[str, str]
) -> None:
    victim_vm = "dash-c"
    node = qemu_lab.vm(victim_vm)["node"]
    page = logged_in(browser, qemu_lab, qemu_lab.state.token)
    try:
        page.goto(f"{qemu_lab.api(avoid=node)}/ui/events")
        page.fill('#event-filters input[name="vm"]', victim_vm)
        mark_page(page)
        off_loop(qemu_lab.fault, "kill", node)
        row = f'#event-table tr[data-kind="vm.recovered"][data-subject="vm/{victim_vm}"]'
        page.wait_for_selector(row, timeout=SLOW_MS)
        assert not_reloaded(page)
        shot(page, "events-failover")
        wait_for(lambda: running(qemu_lab, victim_vm, avoid=node), 60, f"{victim_vm} recovered")
    finally:
        page.context.close()
        off_loop(qemu_lab.restart, node)
        wait_for(lambda: qemu_lab.get(f"/nodes/{node}")["alive"], 60, f"{node} back")


def test_a_reader_sees_no_action_buttons_and_is_refused_anyway(
    browser: Any, qemu_lab: Lab, guests: dict[str, str]
) -> None:
    made = httpx.post(
        f"{qemu_lab.api()}/api/v1/tokens",
        json={"name": "dash-reader", "role": "reader"},
        headers=qemu_lab.headers,
        verify=qemu_lab.ca,
        timeout=10,
    )
    assert made.status_code == 201, made.text
    page = logged_in(browser, qemu_lab, made.json()["token"])
    try:
        assert "reader" in page.inner_text("#whoami")
        for path in ("/ui/", "/ui/nodes", "/ui/vms/dash-a", "/ui/vms"):
            page.goto(f"{qemu_lab.api()}{path}")
            page.wait_for_selector("#live")
            assert page.locator("button[hx-post], form[hx-post]").count() == 0, path
        shot(page, "reader-vm")
        # A hand-made request with the session cookie and the htmx header: refused.
        r = page.request.post(
            f"{qemu_lab.api()}/ui/act/nodes/n3/pause", headers={"HX-Request": "true"}
        )
        assert r.status == 403 and "needs the operator role" in r.text()
        assert qemu_lab.get("/nodes/n3")["admin_state"] == "up"
    finally:
        page.context.close()
