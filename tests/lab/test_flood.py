"""Hostile clients against one real agent while its VMs run: a 300 MB request body, 1,000
concurrent requests, and a slowloris crowd (many sockets trickling request headers).

A one-node lab: real etcd, a real agent process with its watchdog, the sim driver (each VM
is a real process the watchdog would kill). The agent's event loop also keeps its lease and
feeds its watchdog, so anything that stalls it for ``fence_after`` (3 s) gets every VM of
the host SIGKILLed. After each attack: the same VM processes run, the node's alive key is
on the same lease (it was never lost and re-registered), no fencing, kill or restart event
was recorded, the agent's peak memory grew by less than the attack could have cost, and the
API answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from hvcluster.lab import cluster, processes
from tests import waiting
from tests.lab.conftest import Lab, make_lab, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(300)]

VMS = ("flood-1", "flood-2", "flood-3")
# What an agent says when it, or the watchdog, lost its VMs or its lease.
HARM = {
    "node.fenced",
    "node.fenced_vms",
    "node.lease_lost",
    "node.key_lost",
    "node.dead",
    "node.rejoined",
    "node.registered",
    "vm.killed",
    "vm.failed",
    "vm.restarted",
    "vm.recovered",
    "vm.started",
}
MIB = 1024 * 1024
CHUNK = b"v" * (64 * 1024)
HUGE = 300 * MIB


@pytest.fixture(scope="module")
def flood_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab_gen = make_lab(tmp_path_factory.mktemp("flood-lab"), "sim", nodes=1)
    lab = next(lab_gen)
    try:
        for name in VMS:
            lab.post("/vms", {"name": name, "vcpus": 1, "memory_mib": 128})
        for name in VMS:
            wait_for(lambda n=name: lab.vm(n)["state"] == "running", 60, f"{name} running")
        yield lab
    finally:
        lab_gen.close()  # the lab goes down (make_lab's finally)


@dataclass(frozen=True)
class Before:
    pids: frozenset[int]
    lease: int
    seq: int  # the last event's sequence number
    agent_pid: int
    peak_kib: int


def peak_kib(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    assert found, status
    return int(found.group(1))


def heartbeat_lease(lab: Lab) -> int:
    (node,) = lab.get("/nodes")["nodes"]
    assert node["alive"], node
    lease: int = node["heartbeat"]["lease"]
    return lease


def before(lab: Lab) -> Before:
    node = lab.state.nodes[0]
    pids = frozenset(cluster.vm_pids(node))
    assert len(pids) == len(VMS), pids
    events = lab.events(limit=1)
    return Before(
        pids=pids,
        lease=heartbeat_lease(lab),
        seq=events[-1]["seq"] if events else 0,
        agent_pid=node.agent_pid,
        peak_kib=peak_kib(node.agent_pid),
    )


def assert_unharmed(lab: Lab, was: Before, memory_mib: int = 64) -> None:
    """Every VM process still runs, the lease is the same, nothing was fenced, killed or
    restarted, the agent's peak memory grew by less than ``memory_mib``, the API answers."""
    node = lab.state.nodes[0]
    assert node.agent_pid == was.agent_pid and processes.alive(node.agent_pid)
    assert processes.alive(node.watchdog_pid)
    still = wait_for(lambda: lab.get("/healthz")["ok"], 30, "the API to answer again")
    assert still
    assert frozenset(cluster.vm_pids(node)) == was.pids, "a VM process died"
    assert all(processes.alive(p) for p in was.pids)
    assert heartbeat_lease(lab) == was.lease, "the node's lease was lost and re-granted"
    events = [e for e in lab.events(limit=1000) if e["seq"] > was.seq]
    harm = [f"{e['event']['kind']}: {e['event']['reason']}" for e in events]
    assert not [h for h in harm if h.split(":")[0] in HARM], harm
    assert all(lab.vm(name)["state"] == "running" for name in VMS)
    grown = (peak_kib(node.agent_pid) - was.peak_kib) // 1024
    assert grown < memory_mib, f"the agent's peak memory grew by {grown} MiB"


@dataclass(frozen=True)
class Target:
    """The agent's API as a raw client reaches it: over TLS (the lab serves https), and the
    lab's admin token for requests that should get past authentication."""

    host: str
    port: int
    tls: ssl.SSLContext
    auth: str  # an "Authorization: ..." header line

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port, ssl=self.tls)


def address(lab: Lab) -> Target:
    node = lab.state.nodes[0]
    ((name, value),) = lab.headers.items()
    return Target(node.address, node.api_port, lab.ca, f"{name}: {value}\r\n")


async def read_status(reader: asyncio.StreamReader) -> int | None:
    """The status of the HTTP answer on ``reader``, or None if the connection ended first."""
    try:
        line = await reader.readline()
    except ConnectionError:
        return None
    parts = line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/") else None


async def send_huge_body(target: Target, how: str) -> tuple[int | None, int]:
    """POST /vms with a 300 MB JSON body, streamed (never held), answered or not; returns
    the answer's status (None: the connection was cut) and how many bytes were sent.

    ``how``: "chunked" (no length said), "length" (its length declared, the body sent at
    once), "expect" (its length declared, asking first with ``Expect: 100-continue`` as curl
    does for a large body, the body sent only when told to continue)."""
    reader, writer = await target.connect()
    chunked = how == "chunked"
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {HUGE}"
    expect = "Expect: 100-continue\r\n" if how == "expect" else ""
    writer.write(
        f"POST /api/v1/vms HTTP/1.1\r\nHost: {target.host}\r\n{target.auth}"
        f"Content-Type: application/json\r\n{framing}\r\n{expect}\r\n".encode()
    )
    if expect:
        status = await asyncio.wait_for(read_status(reader), 30)
        if status != 100:
            writer.close()
            return status, 0
        await reader.readuntil(b"\r\n\r\n")  # the rest of the interim answer
    answer = asyncio.create_task(read_status(reader))
    sent = 0
    try:
        prefix = b'{"name": "huge", "labels": {"k": "'
        sent += await _send(writer, prefix, chunked)
        while sent < HUGE and not answer.done():
            sent += await _send(writer, CHUNK, chunked)
            # drain() yields only when the buffer is full, and a TLS transport whose peer
            # went away drops writes silently: let the answer's reader run each time.
            await asyncio.sleep(0)
    except ConnectionError:
        pass  # the agent cut the connection: it stopped reading
    finally:
        status = await asyncio.wait_for(answer, 30)
        writer.close()
    return status, sent


async def _send(writer: asyncio.StreamWriter, data: bytes, chunked: bool) -> int:
    if chunked:
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    else:
        writer.write(data)
    await writer.drain()
    return len(data)


def test_a_300_mb_body_is_refused_unread(flood_lab: Lab) -> None:
    was = before(flood_lab)
    target = address(flood_lab)
    status, sent = asyncio.run(send_huge_body(target, "expect"))
    assert (status, sent) == (413, 0), "a declared 300 MB length was not refused at once"
    for how in ("length", "chunked"):
        status, sent = asyncio.run(send_huge_body(target, how))
        # The agent answers 413 once it knows, then closes: a client still sending may meet
        # the close before it reads the answer. Either way it stopped reading early.
        assert status in (413, None), f"{how}: {status}"
        assert sent < 64 * MIB, f"{how}: the agent read {sent >> 20} MiB before refusing"
    assert flood_lab.get_status("/vms/huge") == 404
    assert_unharmed(flood_lab, was)


# A thousand TLS connections at once cost the agent about 450 KiB each while they last
# (asyncio's TLS protocol keeps a 256 KiB read buffer per connection, besides OpenSSL's own):
# a bounded, passing cost on any host, measured 448 MiB here at 1,000 connections.
TLS_FLOOD_MIB = 640

FLOOD_BODY = b'{"name": "flood", "labels": {"k": "' + b"v" * (256 * 1024) + b'"}}'


async def flood(target: Target, count: int) -> list[int | None]:
    """``count`` connections opened first, then each sends one request at once: every other
    one a GET of the VM list, the others a 256 KiB VM spec (refused: a label too long);
    the status of each answer (None: the connection was closed unanswered)."""
    opened = await asyncio.gather(*(target.connect() for _ in range(count)), return_exceptions=True)
    connections = [c for c in opened if not isinstance(c, BaseException)]
    assert len(connections) == count, [c for c in opened if isinstance(c, BaseException)][:3]
    head = f"HTTP/1.1\r\nHost: {target.host}\r\n{target.auth}Connection: close\r\n"
    get = f"GET /api/v1/vms {head}\r\n".encode()
    post = (
        f"POST /api/v1/vms {head}Content-Type: application/json\r\n"
        f"Content-Length: {len(FLOOD_BODY)}\r\n\r\n"
    ).encode() + FLOOD_BODY
    for i, (_, writer) in enumerate(connections):
        with contextlib.suppress(ConnectionError):
            writer.write(get if i % 2 else post)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int | None:
        try:
            return await asyncio.wait_for(read_status(reader), 60)
        finally:
            writer.close()

    return await asyncio.gather(*(answer(r, w) for r, w in connections))


def test_a_thousand_concurrent_requests_get_answers_or_503(flood_lab: Lab) -> None:
    was = before(flood_lab)
    statuses = asyncio.run(flood(address(flood_lab), 1000))
    counts = {s: statuses.count(s) for s in set(statuses)}
    assert set(counts) <= {200, 422, 503}, counts  # each answered: none dropped or failed
    assert counts.get(503, 0) > 0, f"no request was turned away: {counts}"
    assert counts.get(200, 0) > 0 and counts.get(422, 0) > 0, f"none was served: {counts}"
    assert_unharmed(flood_lab, was, memory_mib=TLS_FLOOD_MIB)


async def slowloris(
    target: Target, count: int, give_up_s: float, trickling: list[int] | None = None
) -> list[float | None]:
    """``count`` sockets, each sending an endless request head a byte a second; for each,
    how long until the agent closed it (None: still open after ``give_up_s``).
    ``trickling[0]`` counts the sockets connected and sending (their first byte sent)."""
    started = time.monotonic()
    trickling = trickling if trickling is not None else [0]

    async def one() -> float | None:
        reader, writer = await target.connect()
        head = b"GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
        closed = asyncio.create_task(reader.read())  # b"" (or an error) once the agent closes
        try:
            for i, byte in enumerate(head):
                if closed.done():
                    break
                writer.write(bytes([byte]))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                if i == 0:
                    trickling[0] += 1
                if time.monotonic() - started > give_up_s:
                    return None
                await asyncio.wait([closed], timeout=1.0)
            with contextlib.suppress(ConnectionError):
                await closed
            return time.monotonic() - started
        finally:
            closed.cancel()
            writer.close()

    return await asyncio.gather(*(one() for _ in range(count)))


def test_a_slowloris_crowd_is_cut_off(flood_lab: Lab) -> None:
    """300 slow sockets are fewer than the connection limit: while they trickle, the API
    still serves others; within the head timeout every one of them is cut off."""
    was = before(flood_lab)
    target = address(flood_lab)

    trickling = [0]

    async def meanwhile() -> int:
        await waiting.wait_for(lambda: trickling[0] == 300, 60, "300 sockets trickling")
        async with httpx.AsyncClient(timeout=30, verify=flood_lab.ca) as http:
            return (await http.get(f"{flood_lab.api()}/api/v1/healthz")).status_code

    async def attack() -> tuple[list[float | None], int]:
        return await asyncio.gather(slowloris(target, 300, 90, trickling), meanwhile())

    closed_after, served = asyncio.run(attack())
    still_open = sum(1 for t in closed_after if t is None)
    assert still_open == 0, f"{still_open} of 300 slow connections still open after 90 s"
    assert served == 200
    assert_unharmed(flood_lab, was)


def test_all_three_at_once(flood_lab: Lab) -> None:
    """Together they pass the connection limit (1,300 sockets): connections beyond it are
    closed at once, the rest answered; still nothing of the host is harmed."""
    was = before(flood_lab)
    target = address(flood_lab)

    async def attack() -> tuple[Any, ...]:
        return await asyncio.gather(
            send_huge_body(target, "chunked"),
            flood(target, 1000),
            slowloris(target, 300, give_up_s=90),
        )

    (status, sent), statuses, closed_after = asyncio.run(attack())
    assert status in (413, 503, None) and sent < 64 * MIB  # 503: too many in progress
    assert set(statuses) <= {200, 422, 503, None}, set(statuses)
    assert sum(1 for t in closed_after if t is None) == 0
    assert_unharmed(flood_lab, was, memory_mib=TLS_FLOOD_MIB)
