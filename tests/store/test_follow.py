"""The one wake-on-watch loop (store/follow.py): a change under the followed prefix wakes
the loop at once; a failing cycle, expected or a bug, never ends it; a cancel always does."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from hvcluster.models.errors import StoreError
from hvcluster.store.follow import follow, run_cycles
from tests.store.conftest import Harness


async def test_a_change_wakes_the_loop_and_errors_do_not_end_it(h: Harness) -> None:
    wake, turned = asyncio.Event(), asyncio.Event()
    turns: list[int] = []

    async def cycle() -> None:
        turns.append(len(turns))
        turned.set()
        if len(turns) == 2:
            raise StoreError("etcd went away")
        if len(turns) == 3:
            raise RuntimeError("a bug in one cycle")

    loop = asyncio.create_task(run_cycles("test", cycle, wake, interval=3600))
    watcher = asyncio.create_task(follow(h.store, h.k("things/"), lambda _: wake.set()))
    try:
        async with asyncio.timeout(10):
            await turned.wait()  # the first cycle runs at once
            for n in range(1, 4):  # then only writes wake it: the interval is an hour
                turned.clear()
                while not turned.is_set():  # (until the watch has started, a write is missed)
                    await h.store.put(h.k(f"things/{n}"), b"x")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(turned.wait(), 0.2)
        assert len(turns) >= 4 and not loop.done()
    finally:
        for task in (loop, watcher):
            task.cancel()
        for task in (loop, watcher):
            with contextlib.suppress(asyncio.CancelledError):
                await task
    with pytest.raises(asyncio.CancelledError):
        await loop
