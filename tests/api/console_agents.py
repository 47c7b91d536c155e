"""Agents' APIs served for real (uvicorn on loopback ports, as an agent serves them) over one
memory store, each node with a sim driver whose consoles are real unix sockets: what a
console's websocket, its forwarding to the owner and its following of a VM need."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from hvcluster.agent.consoles import local_console
from hvcluster.api import create_app
from hvcluster.api.serving import server_settings
from hvcluster.drivers.sim import SimDriver
from hvcluster.models.base import encode
from hvcluster.models.lifecycle import VMState
from hvcluster.models.node import Capacity, Node, NodeAlive
from hvcluster.models.vm import Placement, VMSpec, VMStatus
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from tests.waiting import wait_for

KEYS = Keys("t")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ConsoleAgents:
    """Nodes ``n1``, ``n2``, ... each with its API at ``url(node)`` and its sim driver."""

    store: MemoryStore
    tmp: Path
    drivers: dict[str, SimDriver] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = field(default_factory=list)
    apps: dict[str, FastAPI] = field(default_factory=dict)

    def url(self, node: str, vm: str, kind: str = "serial") -> str:
        return f"ws://127.0.0.1:{self.ports[node]}/api/v1/vms/{vm}/console/{kind}"

    async def add_node(self, name: str, setup: Callable[[FastAPI], None] | None = None) -> None:
        """Node ``name`` and its API served; ``setup(app)`` adds to the app (the dashboard)."""
        driver = self.drivers[name] = SimDriver(run_dir=self.tmp / name)
        port = self.ports[name] = free_port()
        node = Node(
            name=name,
            address="127.0.0.1",
            api_port=port,
            capacity=Capacity(cpus=4, memory_mib=4096),
        )
        await self.store.put(KEYS.node(name), encode(node))
        lease = await self.store.grant(60)
        beat = NodeAlive(node=name, lease=lease.id, since=time.time())
        await self.store.put(KEYS.alive(name), encode(beat), lease=lease.id)
        app = create_app(self.store, KEYS, name, local_console=local_console(driver))
        if setup is not None:
            setup(app)
        self.apps[name] = app
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
            **server_settings(),
        )  # fmt: skip
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        self.servers.append((server, task))
        await wait_for(lambda: server.started, 10, f"{name}'s API to listen")

    async def create_vm(self, name: str, node: str, epoch: int = 1) -> VMSpec:
        """``name`` running on ``node``: its spec, its placement and its owner's status."""
        spec = VMSpec(name=name, memory_mib=128, uid=uuid.uuid4().hex)
        await self.store.put(KEYS.vm(name), encode(spec))
        await self.run_on(spec, node, epoch)
        return spec

    async def run_on(self, spec: VMSpec, node: str, epoch: int) -> None:
        """``spec`` starts on ``node`` as placement ``epoch``, and is reported running there."""
        await self.drivers[node].start(spec, epoch)
        await self.place(spec, node, epoch)
        await self.report(spec, node, epoch, VMState.RUNNING)

    async def place(self, spec: VMSpec, node: str, epoch: int) -> None:
        placement = Placement(node=node, epoch=epoch, uid=spec.uid)
        await self.store.put(KEYS.placement(spec.name), encode(placement))

    async def report(self, spec: VMSpec, node: str, epoch: int, state: VMState) -> None:
        status = VMStatus(vm=spec.name, node=node, epoch=epoch, state=state, uid=spec.uid)
        await self.store.put(KEYS.status(spec.name), encode(status))

    async def migrate(self, spec: VMSpec, source: str, target: str, epoch: int) -> None:
        """As a live migration ends: the target runs it, the placement flips, the target
        reports, the source's copy goes away."""
        await self.drivers[target].start(spec, epoch)
        await self.place(spec, target, epoch)
        await self.report(spec, target, epoch, VMState.RUNNING)
        await self.drivers[source].discard(spec.name)

    async def stop(self) -> None:
        for server, _ in self.servers:
            server.should_exit = True
        for _, task in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
        for driver in self.drivers.values():
            for vm in await driver.list():
                with contextlib.suppress(Exception):
                    await driver.kill(vm.name)
            await driver.close()


@contextlib.asynccontextmanager
async def console_agents(
    store: MemoryStore, tmp: Path, *nodes: str, setup: Callable[[FastAPI], None] | None = None
) -> AsyncIterator[ConsoleAgents]:
    agents = ConsoleAgents(store, tmp)
    try:
        for node in nodes:
            await agents.add_node(node, setup)
        yield agents
    finally:
        await agents.stop()
