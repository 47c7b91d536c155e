"""VM consoles in a real lab (real agent processes over TLS, real QEMU guests): ``hvc vm
console`` in a terminal, through an agent that does not run the guest, gets the guest's
shell to answer a typed line, stays open across a live migration (the agent reconnects it to
the new owner) and is left with ^]; a reader is refused; no QEMU opens a TCP port for its
consoles."""

from __future__ import annotations

import contextlib
import os
import pty
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hvcluster.guestimage.image import cached_image, require_image
from hvcluster.guestimage.testguest import booted, create_disk
from tests.drivers.listening import tcp_listening_ports
from tests.lab.conftest import CACHE, Lab, make_lab, wait_for
from tests.lab.test_qemu_failover import create_guest, running, vm_pid
from tests.lab.test_qemu_migration import migrate, serial, set_settings

pytestmark = [pytest.mark.lab, pytest.mark.qemu, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def lab2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if cached_image(CACHE) is None:
        pytest.fail("the test guest image is not built: run scripts/install (hvc image build)")
    yield from make_lab(tmp_path_factory.mktemp("qemu-console"), "qemu", nodes=2)


@pytest.fixture(scope="module")
def guest(lab2: Lab) -> str:
    """The test guest ``con-1``, started on n1 and booted (its shell on the serial port)."""
    create_guest(lab2, "con-1", "n1")
    wait_for(lambda: running(lab2, "con-1"), 90, "con-1 running")
    wait_for(lambda: booted(serial(lab2, "n1", "con-1")), 90, "con-1 booted")
    return "con-1"


def hvc_env(lab: Lab, token: str) -> dict[str, str]:
    return {
        **os.environ,
        "HVC_TOKEN": token,
        "HVC_CA": lab.state.ca,
        "HVC_CONFIG": "",
        "HVC_LAB_DIR": "/nonexistent",
    }


class Terminal:
    """``hvc vm console`` in a pseudo-terminal, as a person runs it. What it shows is read
    all the time (by a thread), as a terminal does: a console whose output nobody took would
    block on its full pty and stop carrying keys too."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.main, child = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, env=env)
        os.close(child)
        self.seen = b""
        self.ended = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.main, 4096)
            except OSError:  # the process ended and its side of the pty closed
                data = b""
            with self._changed:
                if not data:
                    self.ended = True
                self.seen += data
                self._changed.notify_all()
            if not data:
                return

    def type(self, keys: bytes) -> None:
        os.write(self.main, keys)

    def until(self, marker: bytes, timeout: float = 30) -> bytes:
        deadline = time.monotonic() + timeout
        with self._changed:
            while marker not in self.seen:
                if self.ended:
                    raise AssertionError(
                        f"the console ended before {marker!r}: {self.seen[-600:]!r}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no {marker!r} on the terminal; it shows {self.seen[-600:]!r}"
                    )
                self._changed.wait(min(left, 0.5))
            return self.seen

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)
        os.close(self.main)


def test_hvc_vm_console_answers_and_follows_a_live_migration(lab2: Lab, guest: str) -> None:
    lab = lab2
    assert running(lab, guest, avoid="n2"), "it starts on n1"
    n2 = lab.state.api_url(lab.state.node("n2"))
    argv = [sys.executable, "-m", "hvcluster", "vm", "console", "con-1", "--api", n2]
    term = Terminal(argv, hvc_env(lab, lab.state.token))
    try:
        term.until(b"Escape key is '^]'")
        # Only the guest's shell computes 42. What is typed before its shell opened the serial
        # port is lost (the guest's UART drops it at startup): typed again until answered.
        shell_answers(
            term,
            lambda: guest_said(lab, "n1", "con-1"),
            within=60,
            line=b"echo HVC-ANSWER-$((40+2))\r",
            answer=b"HVC-ANSWER-42",
        )

        migrate(lab, "con-1", "n2", "live")
        term.until(b"[hvc: the console of con-1 on n2]", timeout=90)
        term.type(b"echo HVC-MOVED-$((1+1))\r")
        term.until(b"HVC-MOVED-2")
        # QEMU writes the guest's output to the socket, then to serial.log: a moment later.
        log = serial(lab, "n2", "con-1")
        wait_for(lambda: "HVC-MOVED-2" in log.read_text(errors="replace"), 5, "serial.log")

        term.type(b"\x1d")  # ^]
        assert term.proc.wait(20) == 0
        term.until(b"Left the console of con-1")
    finally:
        term.close()

    pid = vm_pid(lab, "n2", "con-1")
    assert pid is not None
    argv_of_qemu = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    vnc = argv_of_qemu[argv_of_qemu.index(b"-vnc") + 1]
    assert vnc.startswith(b"unix:") and vnc.endswith(b"/vnc.sock")
    assert tcp_listening_ports(pid) == [], "a QEMU must listen on no TCP port"
    events = [e["event"] for e in lab.events() if e["event"]["kind"] == "vm.console"]
    assert events and events[-1]["subject"] == "vm/con-1"


def test_a_reader_cannot_open_a_console(lab2: Lab, guest: str) -> None:
    lab = lab2
    reader = lab.post("/tokens", {"name": "console-reader", "role": "reader"})["token"]
    n1 = lab.state.api_url(lab.state.node("n1"))
    done = subprocess.run(
        [sys.executable, "-m", "hvcluster", "vm", "console", "con-1", "--api", n1],
        env=hvc_env(lab, reader),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert b"needs the operator role" in done.stderr


def test_a_failing_guest_is_restarted_on_its_node_then_moved(lab2: Lab) -> None:
    """Guest monitoring through the agents, on real QEMU: the guest panics (pvpanic), made
    so from its console; its agent restarts it on its node (its local restarts: 1 here).
    Then it hangs (its heartbeat unanswered): its restarts there are spent, so the
    controller moves it. The events say why each time."""
    lab, name = lab2, "gm-1"
    disk = Path(lab.state.shared_dir) / f"{name}.qcow2"
    create_disk(disk)
    spec = {
        "name": name,
        "memory_mib": 128,
        "boot": require_image(CACHE).boot().model_dump(),
        "disks": [{"path": str(disk)}],
        "ha": {"preferred_owners": ["n1"], "possible_owners": ["n1", "n2"], "priority": "high"},
        "monitor": {"panic": True, "heartbeat_timeout_s": 5, "heartbeat_grace_s": 120},
    }
    set_settings(lab, {"local_restart_threshold": 1})
    try:
        lab.post("/vms", spec)
        wait_for(lambda: running(lab, name, avoid="n2"), 90, f"{name} running on n1")
        fail(lab, name, "n1", "hvc-panic")
        again = wait_for(lambda: restarted(lab, name, 1), 120, f"{name} restarted on n1")
        status = again["status"]
        assert status["node"] == "n1" and status["restarts"] == 1, (status, said_of(lab, name))
        fail(lab, name, "n1", "hvc-hang")
        moved = wait_for(lambda: running(lab, name, avoid="n1"), 120, f"{name} moved to n2")
        assert moved["status"]["node"] == "n2"
        mine = said_of(lab, name)
        said = [e["reason"] for e in mine if e["kind"] == "vm.restarted"]
        assert len(said) == 1 and "guest panicked (pvpanic)" in said[0], said
        hung = "guest not answering: no heartbeat for 5s"
        assert any(e["kind"] == "vm.failed" and hung in e["reason"] for e in mine), mine
    finally:
        set_settings(lab, {"local_restart_threshold": 3})
        lab.delete(f"/vms/{name}")


def said_of(lab: Lab, name: str) -> list[dict[str, Any]]:
    """The events about VM ``name``."""
    return [e["event"] for e in lab.events(limit=2000) if e["event"]["subject"] == f"vm/{name}"]


def restarted(lab: Lab, name: str, times: int) -> dict[str, Any] | None:
    """The VM running again after its ``times``-th local restart."""
    vm = running(lab, name)
    return vm if vm is not None and vm["status"]["restarts"] >= times else None


def failures(lab: Lab, name: str) -> int:
    """How many times its agent said the VM failed (restarted there, or left failed)."""
    return sum(1 for e in said_of(lab, name) if e["kind"] in ("vm.restarted", "vm.failed"))


def fail(lab: Lab, name: str, node: str, command: str) -> None:
    """Type ``command`` on the guest's console (through ``node``'s agent) once its shell
    answers there (what is typed before the guest's shell has its serial port is lost, and a
    fresh boot takes a while), until its agent says it failed."""
    before = failures(lab, name)
    argv = [sys.executable, "-m", "hvcluster", "vm", "console", name,
            "--api", lab.state.api_url(lab.state.node(node))]  # fmt: skip
    term = Terminal(argv, hvc_env(lab, lab.state.token))
    try:
        term.until(b"Escape key is '^]'")
        shell_answers(term, lambda: guest_said(lab, node, name))
        for _ in range(6):
            term.type(f"{command}\r".encode())
            with contextlib.suppress(AssertionError):
                wait_for(lambda: failures(lab, name) > before, 10, f"{name} failed")
                return
        raise AssertionError(
            f"{name} did not fail on {command}: the terminal shows {term.seen[-600:]!r}; "
            f"{guest_said(lab, node, name)}; its events: {said_of(lab, name)[-8:]}"
        )
    finally:
        term.close()


def shell_answers(
    term: Terminal,
    context: Callable[[], str],
    within: float = 150,
    line: bytes = b"echo HVC-READY-$((20+1))\r",
    answer: bytes = b"HVC-READY-21",
) -> None:
    """Type ``line``, which the guest's shell alone answers with ``answer``, until it does."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        term.type(line)
        with contextlib.suppress(AssertionError):
            term.until(answer, timeout=5)
            return
    raise AssertionError(
        f"the guest's shell did not answer on its console within {within:g} s: "
        f"the terminal shows {term.seen[-600:]!r}; {context()}"
    )


def guest_said(lab: Lab, node: str, name: str) -> str:
    log = serial(lab, node, name)
    tail = log.read_bytes()[-600:] if log.exists() else b"(none)"
    return f"its serial.log on {node} ends {tail!r}"


CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
TERMINAL_TEXT = (
    "(() => { const b = window.hvcSerial.term.buffer.active; const out = [];"
    " for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));"
    " return out.join('\\n'); })()"
)


def test_the_dashboard_console_page_types_into_the_guest_and_shows_its_screen(
    lab2: Lab, guest: str
) -> None:
    """In chromium, through the agent that does not run the guest: the xterm.js terminal
    gets the guest's shell to answer; noVNC connects to QEMU's VNC server (its unix socket,
    bridged by the API's websocket) and draws the guest's screen."""
    from playwright import sync_api

    lab = lab2
    vm = wait_for(lambda: running(lab, "con-1"), 90, "con-1 running")
    other = "n1" if vm["node"] != "n1" else "n2"
    url = lab.state.api_url(lab.state.node(other))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            context = browser.new_context(ignore_https_errors=True)
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{url}/ui/login")
            page.fill("#token", lab.state.token)
            page.click("#login")
            page.wait_for_url(f"{url}/ui/")
            page.goto(f"{url}/ui/vms/con-1/console")
            page.wait_for_function(
                "document.getElementById('serial-status').textContent === 'connected'"
            )
            page.click("#terminal")
            for _ in range(12):  # (typed again until the guest's shell has its serial port)
                page.keyboard.type("echo HVC-BROWSER-$((2+3))")
                page.keyboard.press("Enter")
                with contextlib.suppress(sync_api.TimeoutError):
                    page.wait_for_function(
                        f"{TERMINAL_TEXT}.includes('HVC-BROWSER-5')", timeout=5000
                    )
                    break
            assert "HVC-BROWSER-5" in page.evaluate(TERMINAL_TEXT)

            page.click("#vnc-connect")
            page.wait_for_function(
                "document.getElementById('vnc-status').textContent === 'connected'"
            )
            page.wait_for_selector("#screen canvas")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "console-qemu.png"), full_page=True)
        finally:
            browser.close()
