"""Follow a prefix for as long as a loop runs: the one way our loops wake on changes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from hvcluster.models.errors import StoreError
from hvcluster.store.base import Store, WatchEvent

log = logging.getLogger(__name__)

OnEvent = Callable[[WatchEvent], Awaitable[None] | None]


async def follow(store: Store, prefix: str, on_event: OnEvent, retry_s: float = 0.5) -> None:
    """Call ``on_event`` for every change under ``prefix`` from now on, forever.

    When the watch breaks (etcd unreachable), it is started again from the then current
    revision after ``retry_s``: changes in between are not replayed. That suits its callers,
    loops that only need waking and re-read the whole state each cycle anyway.
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
            await asyncio.sleep(retry_s)
