"""The one way our loops wake on changes: :func:`follow` a prefix, setting the loop's wake
event, and :func:`run_cycles`, the loop itself."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from hvcluster.models.errors import StoreError
from hvcluster.store.base import Store, WatchEvent
from hvcluster.tasks import Sleep, wait_event

log = logging.getLogger(__name__)

OnEvent = Callable[[WatchEvent], Awaitable[None] | None]


async def follow(
    store: Store, prefix: str, on_event: OnEvent, retry_s: float = 0.5, sleep: Sleep | None = None
) -> None:
    """Call ``on_event`` for every change under ``prefix`` from now on, forever.

    When the watch breaks (etcd unreachable), it is started again from the then current
    revision after ``retry_s``: changes in between are not replayed. That suits its callers,
    loops that only need waking and re-read the whole state each cycle anyway. ``sleep``:
    the clock ``retry_s`` is measured on (real time when None; a simulation's virtual one).
    """
    while True:
        try:
            start = await store.revision() + 1
            async for event in store.watch(prefix, start):
                result = on_event(event)
                if result is not None:
                    await result
        except StoreError as e:
            log.warning("watch on %s broke: %s; re-watching", prefix, e)
            await (sleep or asyncio.sleep)(retry_s)


async def run_cycles(
    what: str,
    cycle: Callable[[], Awaitable[object]],
    wake: asyncio.Event,
    interval: float,
    sleep: Sleep | None = None,
    expected: tuple[type[Exception], ...] = (),
) -> None:
    """Run ``cycle`` forever: again as soon as ``wake`` is set (a :func:`follow` saw a change),
    else every ``interval`` seconds (of ``sleep``'s clock when given). A store error, a
    timeout or one of ``expected`` is a warning and the next cycle retries; anything else is
    a bug, logged with its traceback, and the loop goes on all the same (a loop that stopped
    would leave its work undone)."""
    warned: tuple[type[Exception], ...] = (StoreError, TimeoutError, *expected)
    while True:
        try:
            await cycle()
        except warned as e:
            log.warning("%s cycle failed: %s", what, e)
        except Exception:
            log.exception("%s cycle failed unexpectedly; carrying on", what)
        wake.clear()
        await wait_event(wake, interval, sleep)


async def run_cycles_with_tasks(
    what: str,
    cycle: Callable[[], Awaitable[object]],
    wake: asyncio.Event,
    interval: float,
    sleep: Sleep | None,
    tasks: Mapping[str, asyncio.Task[None]],
) -> None:
    """:func:`run_cycles` of a loop that starts a task per record (``tasks``): when the loop
    stops (the daemon does), so do they, given up to 10 s to clean up after themselves."""
    try:
        await run_cycles(what, cycle, wake, interval, sleep)
    finally:
        for task in tasks.values():
            task.cancel()
        if tasks:
            await asyncio.wait(list(tasks.values()), timeout=10)


async def wake_on_changes(
    store: Store, prefix: str, wake: asyncio.Event, sleep: Sleep | None = None
) -> None:
    """Set ``wake`` at every change under ``prefix`` (:func:`follow`, retrying on
    ``sleep``'s clock), forever."""

    def seen(_: WatchEvent) -> None:
        wake.set()

    await follow(store, prefix, seen, sleep=sleep)
