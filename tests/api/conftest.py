"""The API over a MemoryStore, spoken to in-process through httpx's ASGI transport."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from hvcluster.api import create_app
from hvcluster.models.base import encode
from hvcluster.models.event import Event
from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.models.node import Capacity, Node, NodeAlive
from hvcluster.store.events import EventLog
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from tests.tokens import auth, make_token

KEYS = Keys("t")


@pytest.fixture
def app(store: MemoryStore) -> FastAPI:
    """n1's API over the test's store."""
    return create_app(store, KEYS, "n1")


@pytest.fixture
async def api(store: MemoryStore, app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of n1's API carrying an admin token (``tests.tokens.ADMIN``)."""
    transport = httpx.ASGITransport(app=app)
    headers = auth(await make_token(store, KEYS))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://api/api/v1", headers=headers
    ) as client:
        yield client


async def add_node(
    store: MemoryStore,
    name: str,
    *,
    alive: bool = True,
    admin: NodeAdminState = NodeAdminState.UP,
    quarantined_until: float | None = None,
) -> None:
    """Register a node as its agent would: nodes/<name>, and alive/<name> on a lease."""
    node = Node(
        name=name,
        address="127.0.0.1",
        capacity=Capacity(cpus=4, memory_mib=4096),
        admin_state=admin,
        quarantined_until=quarantined_until,
    )
    await store.put(KEYS.node(name), encode(node))
    if alive:
        lease = await store.grant(30)
        beat = NodeAlive(node=name, lease=lease.id, since=time.time())
        await store.put(KEYS.alive(name), encode(beat), lease=lease.id)


async def stored_events(store: MemoryStore) -> list[Event]:
    """What the cluster log holds, oldest first (read as every reader does)."""
    return [logged.event for logged in await EventLog(store, KEYS).recent(10_000)]


async def kinds(store: MemoryStore) -> list[str]:
    return [e.kind for e in await stored_events(store)]


def spec(name: str = "web-1", **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "vcpus": 1, "memory_mib": 128}
    body.update(over)
    return body
