"""A real API server (uvicorn on a free loopback port, in a thread) over a MemoryStore, and
the CLI run against it."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import uvicorn
from typer.testing import CliRunner, Result

from hvcluster.api import create_app
from hvcluster.cli.main import app as cli_app
from hvcluster.models.base import encode
from hvcluster.models.node import Capacity, Node
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from tests.tokens import make_token
from tests.waiting import wait_for_sync

KEYS = Keys("cli")
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ApiServer:
    """uvicorn serving the API in its own thread and event loop; the store lives there too."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.store: MemoryStore | None = None
        self.token = ""  # an admin token, made before the server answers
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: uvicorn.Server | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.error: BaseException | None = None

    async def _main(self) -> None:
        try:
            self.loop = asyncio.get_running_loop()
            self.store, keys = await self.open_store()
            self.token = await make_token(self.store, keys)
            app = create_app(self.store, keys, "n1")
            config = uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
            )
            self.server = uvicorn.Server(config)
            await self.server.serve()
        except BaseException as e:  # surfaced by start()
            self.error = e
        finally:
            await self.close_store()

    async def open_store(self) -> tuple[MemoryStore, Keys]:
        """The store the API serves (a subclass may run a cluster on it)."""
        return MemoryStore(), KEYS

    async def close_store(self) -> None:
        if self.store is not None:
            await self.store.close()

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()

        def started() -> bool:
            if self.error is not None or not self.thread.is_alive():
                raise RuntimeError(f"the API server did not start: {self.error!r}")
            return bool(self.server and self.server.started)

        wait_for_sync(started, timeout, "the API server to start", every=0.01)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.thread.join(timeout=10)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` in the server's loop (where the store lives); return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def env(self) -> dict[str, str]:
        """The environment a CLI needs to speak to this server with its admin token."""
        return {"HVC_TOKEN": self.token}

    def add_node(self, name: str) -> None:
        assert self.store is not None
        node = Node(name=name, address="127.0.0.1", capacity=Capacity(cpus=2, memory_mib=2048))
        self.run(self.store.put(KEYS.node(name), encode(node)))


@pytest.fixture(scope="module")
def server() -> Iterator[ApiServer]:
    s = ApiServer()
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture
def hvc(server: ApiServer) -> Any:
    """``hvc ARGS --api URL`` against the server, with its admin token in ``HVC_TOKEN``."""
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli_app, [*args, "--api", server.url], env=server.env())

    return invoke
