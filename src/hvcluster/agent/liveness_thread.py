"""Where a node's liveness (lease keepalives, watchdog feeding) runs: where nothing else of
the agent can delay it.

On a real host it runs on a thread of its own, with its own event loop and its own etcd
client (:class:`OwnThread`): a handler that blocks, a slow accelerator probe, a reconcile
cycle stuck in a driver call all hold up the agent's main loop, and a keepalive or feed that
waits for them gets every VM of the host killed by the watchdog. It starts first, before any
probe: an agent restarted within ``fence_after`` adopts its lease and feeds the watchdog at
once, whatever the rest of its start costs.

What a thread does not protect against: one C call that holds the GIL for seconds. Python
hands the GIL between threads every few milliseconds, but ``json.loads`` of a 66 MB body
holds it for its whole 3 s (measured here), and this thread waits with everything else. So
request bodies must stay bounded before they are parsed (the API's body size limit); a
frozen agent (SIGSTOP) stops this thread too and is fenced, as it must be.

An in-process simulation (daemons handed a memory store) runs it on the daemon's own loop
instead (:class:`OnLoop`): a :class:`~hvcluster.store.memory_store.MemoryStore` is asyncio code
bound to one loop (its watches, its waiters) and is not made to be shared across threads,
and nothing in a simulation blocks a loop for real.

The node agent reads liveness only through :meth:`LivenessRunner.state` (a snapshot
published under a lock). The hooks liveness calls on the node agent (kill the VMs whose
placement changed, rewrite the node record after a re-registration) run on the main loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from hvcluster.agent.liveness import LivenessState, NodeLiveness
from hvcluster.models.errors import StoreError
from hvcluster.store.base import Store

log = logging.getLogger(__name__)

# Builds the node's liveness on the store (and loop) it is to use.
Build = Callable[[Store, "LivenessRunner"], Awaitable[NodeLiveness]]


async def live(liveness: NodeLiveness) -> None:
    """Register (again and again while etcd cannot be reached), then keep the lease alive
    and watch the alive key, forever."""
    while True:
        try:
            await liveness.register()
            break
        except (StoreError, TimeoutError) as e:
            log.warning("registration failed: %s; trying again", e)
            await asyncio.sleep(liveness.config.keepalive_interval_s)
    with contextlib.suppress(StoreError, TimeoutError):
        await liveness.check_watchdog()
    async with asyncio.TaskGroup() as group:
        group.create_task(liveness.run(), name="liveness")
        group.create_task(liveness.watch_key(), name="watch-alive")


class LivenessRunner(ABC):
    def __init__(self, build: Build) -> None:
        self.build = build
        self.liveness: NodeLiveness | None = None
        self.main_loop: asyncio.AbstractEventLoop | None = None

    def state(self) -> LivenessState:
        """What the node agent may read, from the main loop."""
        return self.liveness.state() if self.liveness is not None else LivenessState()

    @abstractmethod
    async def start(self) -> None:
        """Begin: registration and keepalives go on in the background."""

    @abstractmethod
    async def finished(self) -> None:
        """Return (or raise) only when liveness stopped: the agent must stop with it."""

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    def ended(self) -> bool: ...

    async def registered(self) -> None:
        """Wait until the node holds a lease (adopted or new); raise if liveness ended."""
        while not self.state().registered:
            if self.ended():
                await self.finished()
            await asyncio.sleep(0.05)

    def on_main(
        self, fn: Callable[..., Coroutine[Any, Any, None]], wait: bool = True
    ) -> Callable[..., Awaitable[None]]:
        """``fn`` (a coroutine of the main loop's objects) made callable from liveness;
        with ``wait`` False, liveness goes on at once (it must never wait on a busy loop
        for anything but the safety of its VMs)."""
        return fn


class OnLoop(LivenessRunner):
    """Liveness as tasks of the caller's loop, on the caller's store (simulations)."""

    def __init__(self, store: Store, build: Build) -> None:
        super().__init__(build)
        self.store = store
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.main_loop = asyncio.get_running_loop()
        self.liveness = await self.build(self.store, self)
        self._task = asyncio.create_task(live(self.liveness), name="liveness")

    def ended(self) -> bool:
        return self._task is not None and self._task.done()

    async def finished(self) -> None:
        assert self._task is not None, "start() first"
        await self._task
        raise RuntimeError("liveness ended")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class OwnThread(LivenessRunner):
    """Liveness on a thread of its own, its own event loop and its own store client."""

    def __init__(self, make_store: Callable[[], Store], build: Build, name: str) -> None:
        super().__init__(build)
        self.make_store = make_store
        self.name = name
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._ended: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._stopping = False

    async def start(self) -> None:
        self.main_loop = asyncio.get_running_loop()
        self._ended = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:
            self._error = e
            if not self._stopping:
                log.exception("liveness thread ended")
        finally:
            if self.main_loop is not None and self._ended is not None:
                with contextlib.suppress(RuntimeError):  # the main loop closed already
                    self.main_loop.call_soon_threadsafe(self._ended.set)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        if self._stopping:
            return
        store = self.make_store()
        try:
            self.liveness = await self.build(store, self)
            await live(self.liveness)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(store.close(), 2.0)

    def ended(self) -> bool:
        return self._ended is not None and self._ended.is_set()

    async def finished(self) -> None:
        assert self._ended is not None, "start() first"
        await self._ended.wait()
        if self._error is not None and not isinstance(self._error, asyncio.CancelledError):
            raise self._error
        raise RuntimeError("the liveness thread ended")

    async def stop(self) -> None:
        self._stopping = True
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: it ended
                loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10.0)
            if self._thread.is_alive():
                log.warning("the liveness thread did not stop within 10s")

    def on_main(
        self, fn: Callable[..., Coroutine[Any, Any, None]], wait: bool = True
    ) -> Callable[..., Awaitable[None]]:
        async def on_main_loop(*args: object) -> None:
            assert self.main_loop is not None
            future = asyncio.run_coroutine_threadsafe(fn(*args), self.main_loop)
            if wait:
                await asyncio.wrap_future(future)
            else:
                future.add_done_callback(_log_failure)

        return on_main_loop


def _log_failure(future: concurrent.futures.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("liveness hook on the main loop failed: %s", future.exception())
