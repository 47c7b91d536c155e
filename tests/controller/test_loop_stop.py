"""Loops stop when cancelled, even when their wake event is set in the same loop turn.

Python 3.11's ``asyncio.wait_for(event.wait(), t)`` swallows such a cancellation: a sim
cluster's controller (its migration coordinator's loop) ran on after the cluster stopped,
and the test's event loop hung at its close. :func:`hvcluster.tasks.wait_event` and
:func:`hvcluster.tasks.cancel_all` never lose one."""

from __future__ import annotations

import asyncio

import pytest

from hvcluster.clock import ManualClock, settle
from hvcluster.controller.loop import Controller
from hvcluster.store.memory_store import MemoryStore
from hvcluster.tasks import cancel_all, wait_event, within
from tests.controller.test_migrations import KEYS


async def _nothing(kind: str, subject: str, reason: str) -> None:
    return None


@pytest.mark.parametrize("turns", [0, 1, 2])
async def test_a_wait_cancelled_as_its_event_is_set_is_cancelled(turns: int) -> None:
    event = asyncio.Event()
    task = asyncio.create_task(wait_event(event, 60))
    await settle()
    event.set()
    for _ in range(turns):
        await asyncio.sleep(0)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_wait_ends_at_its_timeout_of_the_given_clock() -> None:
    event = asyncio.Event()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    assert await wait_event(event, 7.0, sleep) is False
    assert slept == [7.0]
    event.set()
    assert await wait_event(event, 7.0, sleep) is True


async def test_a_bounded_wait_ends_at_its_timeout_of_the_given_clock_not_real_time() -> None:
    clock, event = ManualClock(), asyncio.Event()
    waiting = asyncio.ensure_future(event.wait())
    bounded = asyncio.create_task(within(waiting, 5.0, clock.sleep))
    await clock.advance(4.9)
    assert not bounded.done()
    await clock.advance(0.2)
    with pytest.raises(TimeoutError):
        await bounded
    assert waiting.cancelled()
    event.set()
    assert await within(event.wait(), 5.0, clock.sleep) is True


async def test_cancel_all_cancels_in_the_order_given() -> None:
    """Not in a set's order (the tasks' addresses): a simulation's replay would depend on
    what ran before it in the process."""
    stopped: list[int] = []

    async def child(i: int) -> None:
        try:
            await asyncio.sleep(60)
        finally:
            stopped.append(i)

    tasks = [asyncio.create_task(child(i)) for i in range(20)]
    await settle()
    await cancel_all(tasks[::-1])
    assert stopped == list(range(20))[::-1]


async def test_cancel_all_stops_a_task_that_swallows_one_cancellation() -> None:
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            swallowed.set()  # as wait_for does in the race above
        await asyncio.sleep(60)

    task = asyncio.create_task(stubborn())
    await settle()
    await asyncio.wait_for(cancel_all([task]), 5)
    assert swallowed.is_set() and task.cancelled()


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
async def test_a_controller_cancelled_as_its_loops_are_woken_ends_with_them(
    store: MemoryStore, turns: int
) -> None:
    controller = Controller(store, KEYS, "n1", _nothing, is_leader=lambda: False)
    run = asyncio.create_task(controller.run(interval=60))
    await settle()
    helpers = [t for t in asyncio.all_tasks() if t.get_name() in ("migrations", "watch-migrations")]
    assert len(helpers) == 2
    controller.wake.set()
    controller.migrations.wake.set()
    for _ in range(turns):
        await asyncio.sleep(0)
    run.cancel()
    done, _ = await asyncio.wait({run, *helpers}, timeout=5)
    assert run in done and all(t in done for t in helpers), "a loop ran on after the stop"
