"""One QMP connection to one QEMU, through ``qemu.qmp``: commands with a deadline, events to a
callback, and a future that resolves when QEMU hangs up (it exited, or was killed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError, Runstate

from hvcluster.drivers.errors import QemuFailed

log = logging.getLogger(__name__)

EventHandler = Callable[[str, dict[str, Any]], None]


class Monitor:
    """A connected QMP session. ``on_event(name, data)`` sees every event, in order."""

    def __init__(self, name: str, socket: Path, on_event: EventHandler, timeout: float) -> None:
        self.name = name
        self.socket = socket
        self.timeout = timeout
        self._on_event = on_event
        self._client = QMPClient(f"hvc-{name}")
        self._listener = EventListener()
        self._tasks: list[asyncio.Task[None]] = []
        self._extra: list[EventHandler] = []  # handlers added by subscribe(), called first
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def connect(
        cls, name: str, socket: Path, on_event: EventHandler, timeout: float = 10.0
    ) -> Monitor:
        self = cls(name, socket, on_event, timeout)
        self._client.register_listener(self._listener)
        try:
            async with asyncio.timeout(timeout):
                await self._client.connect(str(socket))
        except (QMPError, OSError, TimeoutError) as e:
            raise QemuFailed(f"vm {name}: cannot connect to QMP at {socket}: {e}") from e
        self._tasks = [
            asyncio.create_task(self._pump(), name=f"qmp-events-{name}"),
            asyncio.create_task(self._watch(), name=f"qmp-watch-{name}"),
        ]
        return self

    @property
    def connected(self) -> bool:
        return self._client.runstate == Runstate.RUNNING

    async def execute(self, command: str, args: dict[str, Any] | None = None) -> Any:
        """Run a QMP command; QEMU's refusal or a lost connection is :class:`QemuFailed`."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._client.execute(command, args)
        except ExecuteError as e:
            raise QemuFailed(f"vm {self.name}: {command}: {e}") from e
        except (QMPError, OSError, EOFError) as e:
            raise QemuFailed(f"vm {self.name}: {command}: QMP connection lost ({e!r})") from e
        except TimeoutError as e:
            raise QemuFailed(f"vm {self.name}: {command}: no answer in {self.timeout}s") from e

    @contextlib.contextmanager
    def subscribe(self, handler: EventHandler) -> Iterator[None]:
        """Also call ``handler(name, data)`` for every event while the block runs (before
        the monitor's own handler, so a waiter on it is woken first)."""
        self._extra.append(handler)
        try:
            yield
        finally:
            self._extra.remove(handler)

    def send_fd(self, fd: int) -> None:
        try:
            self._client.send_fd_scm(fd)
        except (QMPError, OSError) as e:
            raise QemuFailed(f"vm {self.name}: cannot pass a file descriptor: {e}") from e

    async def close(self) -> None:
        """Hang up (QEMU keeps running)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self._client.disconnect()
        if not self.closed.done():
            self.closed.set_result(None)

    async def _pump(self) -> None:
        async for event in self._listener:
            try:
                data = event.get("data")
                name, args = str(event["event"]), data if isinstance(data, dict) else {}
                for handler in list(self._extra):
                    handler(name, args)
                self._on_event(name, args)
            except Exception:  # a bug in a handler must not stop the pump
                log.exception("vm %s: handling QMP event %s failed", self.name, event)

    async def _watch(self) -> None:
        while self._client.runstate == Runstate.RUNNING:
            await self._client.runstate_changed()
        # QEMU hung up: let the pump deliver what was already queued, then say so.
        for _ in range(100):
            if self._listener.empty():
                break
            await asyncio.sleep(0)
        with contextlib.suppress(Exception):
            await self._client.disconnect()
        if not self.closed.done():
            self.closed.set_result(None)
