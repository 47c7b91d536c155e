"""The CLI against a real API server: what people see, what scripts get, and errors told
in one line."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hvcluster.cli.client import ApiError, Client, resolve_urls
from hvcluster.cli.main import app as cli_app
from hvcluster.cli.output import ExitCode
from tests.cli.conftest import ApiServer, free_port

pytestmark = pytest.mark.timeout(60)


def ok(result: Any) -> str:
    assert result.exit_code == 0, result.output
    return str(result.output)


def test_vm_lifecycle(hvc: Any) -> None:
    out = ok(
        hvc(
            "vm",
            "create",
            "web-1",
            "--vcpus",
            "2",
            "--memory",
            "256",
            "--priority",
            "high",
            "--disk",
            "csv1:./web-1.qcow2",
            "--preferred-owner",
            "n1",
        )
    )
    assert "created vm web-1" in out
    refused = hvc("vm", "create", "web-2", "--disk", "/etc/passwd")
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert "disks.0.path" in refused.output and "allowed_disk_dirs" in refused.output

    listed = json.loads(ok(hvc("vm", "list", "--json")))
    vm = next(v for v in listed["vms"] if v["name"] == "web-1")
    assert (vm["state"], vm["desired_state"]) == ("pending", "running")
    assert vm["spec"]["ha"]["priority"] == "high"
    assert (vm["spec"]["disks"][0]["volume"], vm["spec"]["disks"][0]["path"]) == (
        "csv1",
        "web-1.qcow2",
    )

    table = ok(hvc("vm", "list"))
    assert "web-1" in table and "pending" in table

    shown = json.loads(ok(hvc("vm", "show", "web-1", "--json")))
    assert (shown["spec"]["vcpus"], shown["spec"]["memory_mib"]) == (2, 256)
    assert shown["spec"]["ha"]["preferred_owners"] == ["n1"]
    assert "256 MiB" in ok(hvc("vm", "show", "web-1"))

    assert "desired stopped" in ok(hvc("vm", "stop", "web-1"))
    assert json.loads(ok(hvc("vm", "show", "web-1", "--json")))["desired_state"] == "stopped"
    assert "desired running" in ok(hvc("vm", "start", "web-1"))

    assert "deleted vm web-1" in ok(hvc("vm", "rm", "web-1"))
    gone = hvc("vm", "show", "web-1")
    assert gone.exit_code == ExitCode.NOT_FOUND
    assert "vm 'web-1' not found" in gone.output


def test_create_from_file_with_overrides(hvc: Any, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "db-1", "vcpus": 1, "ha": {"priority": "low"}}))
    ok(
        hvc(
            "vm",
            "create",
            "--file",
            str(spec),
            "--vcpus",
            "3",
            "--stopped",
            "--anti-affinity",
            "db",
            "--hard-anti-affinity",
            "--cpu-model",
            "Nehalem",
        )
    )
    vm = json.loads(ok(hvc("vm", "show", "db-1", "--json")))
    assert (vm["spec"]["vcpus"], vm["desired_state"]) == (3, "stopped")
    assert vm["spec"]["cpu_model"] == "Nehalem"
    bad = hvc("vm", "create", "x-1", "--cpu-model", "Nehalem,+avx")  # never a -cpu option
    assert bad.exit_code != 0 and "cpu_model" in bad.output
    ha = vm["spec"]["ha"]
    assert (ha["priority"], ha["anti_affinity_classes"], ha["anti_affinity_enforced"]) == (
        "low",
        ["db"],
        True,
    )


def test_guest_monitor_options_reach_the_spec_and_show(hvc: Any, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "mon-1", "monitor": {"heartbeat_grace_s": 600}}))
    ok(hvc("vm", "create", "--file", str(spec), "--stopped", "--panic-monitor"))
    ok(hvc("vm", "create", "mon-2", "--stopped", "--heartbeat-timeout", "30"))
    ok(hvc("vm", "create", "mon-3", "--stopped"))
    monitors = [
        json.loads(ok(hvc("vm", "show", name, "--json")))["spec"]["monitor"]
        for name in ("mon-1", "mon-2", "mon-3")
    ]
    assert [(m["panic"], m["heartbeat_timeout_s"], m["heartbeat_grace_s"]) for m in monitors] == [
        (True, 0.0, 600.0),  # the file's grace kept beside the option
        (False, 30.0, 300.0),
        (False, 0.0, 300.0),
    ]
    assert "panic" in ok(hvc("vm", "show", "mon-1"))
    assert "heartbeat within 30 s (first after 300 s)" in ok(hvc("vm", "show", "mon-2"))
    shown = " ".join(ok(hvc("vm", "show", "mon-3")).replace("│", " ").split())
    assert "guest monitor off" in shown
    bad = hvc("vm", "create", "mon-4", "--heartbeat-timeout", "-1")
    assert bad.exit_code == ExitCode.USAGE and "heartbeat_timeout_s" in bad.output


@pytest.mark.parametrize(
    ("args", "words", "code"),
    [
        (("vm", "create", "Bad_Name"), "name: invalid name 'Bad_Name'", ExitCode.USAGE),
        (
            ("vm", "create", "x1", "--memory", "-5"),
            "memory_mib: Input should be greater",
            ExitCode.USAGE,
        ),
        (
            ("vm", "create", "x2", "--preferred-owner", "n1", "--possible-owner", "n2"),
            "not among possible_owners",
            ExitCode.USAGE,
        ),
        (("vm", "start", "ghost"), "vm 'ghost' not found", ExitCode.NOT_FOUND),
        (("node", "pause", "ghost"), "node 'ghost' not found", ExitCode.NOT_FOUND),
    ],
)
def test_errors_are_one_line_without_traceback(
    hvc: Any, args: tuple[str, ...], words: str, code: ExitCode
) -> None:
    result = hvc(*args)
    assert result.exit_code == code
    assert "Traceback" not in result.output
    assert result.output.startswith("error: ")
    assert words in " ".join(result.output.split())


def test_duplicate_is_refused(hvc: Any) -> None:
    ok(hvc("vm", "create", "dup-1"))
    again = hvc("vm", "create", "dup-1")
    assert again.exit_code == ExitCode.CONFLICT
    assert "vm 'dup-1' already exists" in again.output


def test_node_pause_resume(hvc: Any, server: ApiServer) -> None:
    server.add_node("n7")
    assert "node n7: paused (kernel upgrade)" in ok(
        hvc("node", "pause", "n7", "--reason", "kernel upgrade")
    )
    nodes = json.loads(ok(hvc("node", "list", "--json")))["nodes"]
    n7 = next(n for n in nodes if n["name"] == "n7")
    assert (n7["admin_state"], n7["alive"]) == ("paused", False)
    table = ok(hvc("node", "list"))
    assert "n7" in table and "paused" in table
    assert "kernel upgrade" in ok(hvc("node", "show", "n7"))
    assert "node n7: up" in ok(hvc("node", "resume", "n7"))
    assert json.loads(ok(hvc("node", "show", "n7", "--json")))["admin_state"] == "up"


def test_events_list(hvc: Any) -> None:
    ok(hvc("vm", "create", "ev-1"))
    ok(hvc("vm", "stop", "ev-1"))
    answer = json.loads(ok(hvc("events", "--limit", "2", "--json")))
    assert [(e["event"]["kind"], e["event"]["subject"]) for e in answer["events"]] == [
        ("vm.created", "vm/ev-1"),
        ("vm.stop_requested", "vm/ev-1"),
    ]
    assert all(e["event"]["actor"] == "token:test-admin@n1" for e in answer["events"])
    table = ok(hvc("events", "--limit", "2"))
    assert "vm.stop_requested" in table


def test_events_follow(hvc: Any, server: ApiServer) -> None:
    """A real `hvc events --follow` process prints the last event, then the next one."""
    ok(hvc("vm", "create", "fol-1"))
    env = {**os.environ, "HVC_API": server.url, **server.env()}
    code = "from hvcluster.cli.main import app; app()"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "events",
            "--follow",
            "--limit",
            "1",
            "--count",
            "1",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["event"]["subject"] == "vm/fol-1"
        ok(hvc("vm", "stop", "fol-1"))  # after the listing: must come through the stream
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        [followed] = [json.loads(line) for line in out.splitlines()]
        assert (followed["event"]["kind"], followed["event"]["subject"]) == (
            "vm.stop_requested",
            "vm/fol-1",
        )
    finally:
        proc.kill()
        proc.wait()


def test_connection_refused_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli_app, ["vm", "list", "--api", url])
    assert result.exit_code == ExitCode.UNREACHABLE
    assert "Traceback" not in result.output
    said = " ".join(result.output.split())  # Rich wraps at the (test) terminal's width
    assert url in said
    assert "connection refused" in said


def test_second_url_is_tried_when_the_first_refuses(server: ApiServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(
        cli_app, ["vm", "list", "--json", "--api", f"{dead},{server.url}"], env=server.env()
    )
    assert result.exit_code == 0, result.output
    assert "vms" in json.loads(result.output)


def test_where_the_api_is_found(tmp_path: Path) -> None:
    lab = tmp_path / "lab.json"
    lab.write_text(json.dumps({"api": ["http://127.0.0.1:1/", "http://127.0.0.1:2"]}))
    env = {"HVC_API": "http://127.0.0.1:9,http://127.0.0.1:8"}
    assert resolve_urls(["http://a:1"], env, lab) == ["http://a:1"]
    assert resolve_urls(None, env, lab) == ["http://127.0.0.1:9", "http://127.0.0.1:8"]
    assert resolve_urls(None, {}, lab) == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    with pytest.raises(ApiError, match="no lab running"):
        resolve_urls(None, {}, tmp_path / "absent.json")
    lab.write_text("{}")
    with pytest.raises(ApiError, match="lists no API URLs"):
        resolve_urls(None, {}, lab)
    # HVC_LAB_DIR moves the state file, as the lab does
    (tmp_path / "lab2").mkdir()
    (tmp_path / "lab2" / "lab.json").write_text(json.dumps({"api": ["http://x:3"]}))
    assert resolve_urls(None, {"HVC_LAB_DIR": str(tmp_path / "lab2")}) == ["http://x:3"]


@pytest.mark.timeout(30)
def test_a_hung_agent_is_skipped(server: ApiServer) -> None:
    """A listener that accepts and never answers (a SIGSTOPped host): reads and writes go to
    the next agent, found by a short /healthz probe, and the hung one is never sent a write
    (it would run it when it resumes)."""
    import socket
    import time

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    try:
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        started = time.monotonic()
        result = CliRunner().invoke(
            cli_app, ["vm", "list", "--json", "--api", f"{url},{server.url}"], env=server.env()
        )
        assert result.exit_code == 0, result.output
        assert "vms" in json.loads(result.output)
        assert time.monotonic() - started < 2.0 + 1.0  # the probe's 0.75 s, not the 5 s timeout
        write = CliRunner().invoke(
            cli_app, ["vm", "start", "ghost-x", "--api", f"{url},{server.url}"], env=server.env()
        )
        assert write.exit_code == ExitCode.NOT_FOUND, write.output  # answered by the live one
        # What reached the hung agent's socket: probes only, never the write.
        hung.settimeout(0.2)
        received = b""
        while True:
            try:
                conn, _ = hung.accept()
            except TimeoutError:
                break
            with conn:
                conn.settimeout(0.5)
                with contextlib.suppress(TimeoutError):
                    received += conn.recv(65536)
        assert b"GET /api/v1/healthz" in received
        assert b"POST" not in received and b"ghost-x" not in received
    finally:
        hung.close()


@pytest.mark.timeout(30)
def test_a_write_that_times_out_is_not_sent_again(server: ApiServer) -> None:
    """With a single agent, which hangs after accepting: the write fails after the timeout,
    saying it may or may not have been done, and is not retried."""
    import socket

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    try:
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        client = Client([url], timeout=0.5, token="x.y")
        with pytest.raises(ApiError, match="may or may not have been done"):
            client.post("/vms/ghost/start")
        client.close()
    finally:
        hung.close()


@pytest.mark.timeout(30)
def test_no_agent_answering_is_unreachable_naming_each(server: ApiServer) -> None:
    """Every agent hung: the probe passes each over, each is still asked (it may only be
    slow), and the error names every one; the exit code says unreachable."""
    import socket

    hung = [socket.socket(), socket.socket()]
    for s in hung:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
    try:
        urls = [f"http://127.0.0.1:{s.getsockname()[1]}" for s in hung]
        client = Client(urls, timeout=0.5, token="x.y", probe_timeout=0.2)
        with pytest.raises(ApiError) as caught:
            client.get("/vms")
        client.close()
        assert caught.value.unreachable
        message = str(caught.value)
        assert all(u in message for u in urls) and "did not answer in time" in message
        result = CliRunner().invoke(
            cli_app, ["vm", "list", "--api", ",".join(urls)], env=server.env()
        )
        assert result.exit_code == ExitCode.UNREACHABLE
    finally:
        for s in hung:
            s.close()
