"""The migration-port probe of ``GET /cluster/validate``: real agent APIs (uvicorn) over a
MemoryStore; every probe is a real TCP connection to a listener the target's agent opened on
its migration address at a free port, as an incoming migration does. The failure case runs
in a network namespace of its own (root only) where a firewall lets only n2's agent API port
through, as a host firewall that forgot migrations would (and where a node registered with
an address that is not its own cannot open a listener at all)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx
import pytest

from hvcluster.store.memory_store import MemoryStore
from tests.api.conftest import KEYS
from tests.tokens import api_client
from tests.validate.agents import Agents, free_port
from tests.waiting import wait_for

# agents that must answer within seconds: not on a core shared with other tests
pytestmark = [pytest.mark.timeout(60), pytest.mark.alone]


@pytest.fixture
async def agents(store: MemoryStore) -> AsyncIterator[Agents]:
    a = Agents(store, KEYS)
    try:
        yield a
    finally:
        await a.stop()


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


async def test_every_ordered_pair_reaches_the_others_migration_listener(
    api: httpx.AsyncClient, agents: Agents
) -> None:
    for name in ("n1", "n2", "n3"):
        await agents.add(name)
    by = checks((await api.get("/cluster/validate")).json())
    pairs = [(a, b) for a in ("n1", "n2", "n3") for b in ("n1", "n2", "n3") if a != b]
    for a, b in pairs:
        check = by[f"migration port {a} -> {b}"]
        assert check["category"] == "network" and check["status"] == "pass", check
        assert (
            f"{a} reaches an incoming-migration listener on {b} at 127.0.0.1:" in check["message"]
        )
    assert sum(1 for n in by if n.startswith("migration port")) == 6


async def test_the_listener_greets_once_then_closes(api: httpx.AsyncClient, agents: Agents) -> None:
    await agents.register("n1", free_port(), alive=True)
    answer = (await api.post("/probe/listen")).json()
    assert answer["node"] == "n1" and not answer["error"]
    host, _, port = answer["address"].rpartition(":")
    assert host == "127.0.0.1"  # n1's registered address
    reader, writer = await asyncio.open_connection(host, int(port))
    assert (await reader.readline()).strip() == answer["token"].encode()
    writer.close()

    async def closed() -> bool:
        try:
            _, w = await asyncio.open_connection(host, int(port))
        except OSError:
            return True
        w.close()
        return False

    await wait_for(closed, 1, "the port closed")
    r = await api.get("/probe", params={"migration": "nope"})
    assert r.status_code == 422 and r.json()["field"] == "migration"


async def test_unregistered_agent_and_unreachable_target(
    api: httpx.AsyncClient, agents: Agents
) -> None:
    assert "not registered" in (await api.post("/probe/listen")).json()["error"]
    await agents.add("n1")
    await agents.add("n2")
    await agents.register("n3", free_port())  # alive in the store, no agent listens
    by = checks((await api.get("/cluster/validate")).json())
    unknown = by["migration port n1 -> n3"]
    assert unknown["status"] == "warn", unknown
    assert "n3's agent could not be asked to open a listener" in unknown["message"]
    assert by["agent api n1 -> n3"]["status"] == "fail"  # that one says what is wrong
    assert by["migration port n2 -> n1"]["status"] == "pass"


async def test_a_node_with_a_migration_address_is_probed_there(
    api: httpx.AsyncClient, agents: Agents
) -> None:
    """Its migrations listen on its migration network's address (agent config
    ``migration_address``), not on its API's: the probe opens and reaches the listener there."""
    await agents.add("n1")
    await agents.add("n2", migration_address="127.0.0.2")
    by = checks((await api.get("/cluster/validate")).json())
    there = by["migration port n1 -> n2"]
    assert there["status"] == "pass", there
    assert "on n2 at 127.0.0.2:" in there["message"], there
    assert "on n1 at 127.0.0.1:" in by["migration port n2 -> n1"]["message"]


# --- a firewall that lets only the agent API through -------------------------------------

CLONE_NEWNET = 0x40000000


def run_in_netns(ns: str, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``main()`` in a new event loop in a thread that has entered network namespace
    ``ns`` (sockets made there live there); its result, or its exception."""
    out: dict[str, Any] = {}

    def thread() -> None:
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
            out["result"] = asyncio.run(main())
        except BaseException as e:  # handed to the test
            out["error"] = e

    t = threading.Thread(target=thread, daemon=True)
    t.start()
    t.join(timeout=50)
    assert not t.is_alive(), "the scenario in the namespace did not finish"
    if "error" in out:
        raise out["error"]
    return out["result"]


@pytest.fixture
def netns() -> Any:
    if os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("nft")):
        pytest.skip("needs root, iproute2 and nftables")
    name = f"hvc-val-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def firewall(ns: str, address: str, open_port: int) -> None:
    """In ``ns``: drop TCP to ``address`` except to ``open_port``."""
    rules = f"""
table inet hvctest {{
  chain input {{
    type filter hook input priority 0; policy accept;
    ip daddr {address} tcp dport != {open_port} drop
  }}
}}
"""
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True, check=True
    )


def test_a_firewalled_migration_port_fails_naming_both_nodes(netns: str) -> None:
    async def scenario() -> dict[str, dict[str, Any]]:
        store = MemoryStore()
        agents = Agents(store, KEYS)
        try:
            await agents.add("n1")  # 127.0.0.1
            port = await agents.serve("n2", host="127.0.0.2")
            await agents.register("n2", port, address="127.0.0.2")
            await asyncio.to_thread(firewall, netns, "127.0.0.2", port)
            async with api_client(store, KEYS, "n1") as api:
                found = checks((await api.get("/cluster/validate")).json())
            # n3's registered address is not one of its own here: it cannot listen there.
            await agents.register("n3", free_port(), address="10.0.0.9")
            async with api_client(store, KEYS, "n3") as api:
                unbound = (await api.post("/probe/listen")).json()
            found["unbound"] = unbound
            return found
        finally:
            await agents.stop()
            await store.close()

    by = run_in_netns(netns, scenario)
    assert by["agent api n1 -> n2"]["status"] == "pass"  # the API port is let through
    assert by["agent api n2 -> n1"]["status"] == "pass"
    assert by["migration port n2 -> n1"]["status"] == "pass"
    blocked = by["migration port n1 -> n2"]
    assert blocked["status"] == "fail" and blocked["nodes"] == ["n1", "n2"], blocked
    assert "n1 cannot reach a migration listener on n2 at 127.0.0.2:" in blocked["message"]
    assert "no answer in 2 s" in blocked["message"]
    assert "live migrations from n1 to n2 will fail" in blocked["action"]
    assert "ephemeral ports" in blocked["action"]
    assert by["unbound"]["error"] == "cannot listen on 10.0.0.9: cannot assign requested address"
