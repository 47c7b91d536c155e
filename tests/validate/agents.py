"""Real agent APIs for validation tests: uvicorn servers in the running event loop, one per
node, all over one store, registered as their agents would register them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from hvcluster.api import create_app
from hvcluster.models.base import encode
from hvcluster.models.node import Capacity, Inventory, Node, NodeAlive
from hvcluster.store.base import Store
from hvcluster.store.keys import Keys
from tests.waiting import wait_for

INVENTORY = Inventory(
    host_cpu="Test CPU", cpu_flags=("fpu", "sse2"), accelerator="tcg", qemu_version="7.2.22"
)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # leave the test runner's signals alone
        yield


class Agents:
    """Serve the API of each node on its own loopback port; stop them all at the end."""

    def __init__(self, store: Store, keys: Keys) -> None:
        self.store, self.keys = store, keys
        self.servers: list[tuple[_Server, asyncio.Task[None]]] = []

    async def serve(self, name: str, host: str = "127.0.0.1") -> int:
        port = free_port(host)
        config = uvicorn.Config(
            create_app(self.store, self.keys, name),
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve())
        self.servers.append((server, task))

        def started() -> bool:
            if task.done():
                raise RuntimeError(f"the API of {name} did not start: {task.exception()!r}")
            return bool(server.started)

        await wait_for(started, 10, f"the API of {name} to start", every=0.01)
        return port

    async def register(self, name: str, port: int, *, alive: bool = True, **over: Any) -> Node:
        fields: dict[str, Any] = {
            "name": name,
            "address": "127.0.0.1",
            "api_port": port,
            "capacity": Capacity(cpus=2, memory_mib=2048),
            "inventory": INVENTORY,
        }
        fields.update(over)
        node = Node(**fields)
        await self.store.put(self.keys.node(name), encode(node))
        if alive:
            lease = await self.store.grant(60)
            beat = NodeAlive(node=name, lease=lease.id, since=time.time())
            await self.store.put(self.keys.alive(name), encode(beat), lease=lease.id)
        return node

    async def add(self, name: str, **over: Any) -> Node:
        """A node whose agent serves its API and is registered alive."""
        return await self.register(name, await self.serve(name), **over)

    async def stop(self) -> None:
        for server, _ in self.servers:
            server.should_exit = True
        for _, task in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
        self.servers.clear()
