"""Waiting for an event and stopping tasks without ever losing a cancellation.

Python 3.11's ``asyncio.wait_for(event.wait(), t)`` returns normally when the event is set
in the same loop turn as the waiting task is cancelled: the cancellation is swallowed and a
``while True`` loop around it runs on for ever. A parent that cancelled it once then waits
for it for ever (a sim cluster's controller was seen doing exactly that after a stop).
:func:`wait_event` never swallows one, and :func:`cancel_all` cancels again until the tasks
end (for code that may still use ``wait_for``, ours or a library's).

Timeouts take the caller's ``sleep`` (:func:`within`, :func:`wait_event`): a simulation's
daemons run on a virtual clock, and a timeout in real seconds there would fire at a virtual
moment that depends on how fast the machine runs (``hvc sim``'s replays must not).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


async def wait_event(event: asyncio.Event, timeout: float, sleep: Sleep | None = None) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass (of ``sleep``'s clock when
    given, else real time); whether it was set. A cancellation always propagates."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    timer = asyncio.ensure_future(sleep(timeout)) if sleep is not None else None
    try:
        if timer is None:
            await asyncio.wait({waiter}, timeout=timeout)
        else:
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if timer is not None:
            timer.cancel()
    return event.is_set()


async def within(work: Awaitable[T], timeout: float, sleep: Sleep | None = None) -> T:
    """``asyncio.wait_for(work, timeout)`` with ``timeout`` in seconds of ``sleep``'s clock
    (real time when None): ``work`` cancelled and :class:`TimeoutError` raised when the time
    runs out first; a cancellation of the caller propagates. As ``asyncio.timeout`` does,
    ``work`` runs in the caller's task and the timer cancels that task: one task (the
    timer's) per call, not two (a simulation bounds every keepalive this way)."""
    if sleep is None:
        return await asyncio.wait_for(work, timeout)
    me = asyncio.current_task()
    assert me is not None
    cancelling = me.cancelling()
    state = {"fired": False, "over": False}

    def expire(timer: asyncio.Future[None]) -> None:
        if not state["over"] and not timer.cancelled():
            state["fired"] = True
            me.cancel()

    timer = asyncio.ensure_future(sleep(timeout))
    timer.add_done_callback(expire)
    try:
        return await work
    except asyncio.CancelledError:
        if state["fired"] and me.uncancel() <= cancelling:  # ours, not the caller's
            raise TimeoutError(f"no answer within {timeout:g}s") from None
        raise
    finally:
        state["over"] = True
        timer.cancel()


async def cancel_all(tasks: Iterable[asyncio.Task[Any]], rounds: int = 10) -> None:
    """Cancel ``tasks`` and wait until they are done, cancelling again while one runs on
    (a swallowed cancellation: see the module's docstring); never waits for ever (``rounds``
    half-seconds). A caller cancelled meanwhile still stops them first, then is cancelled:
    a child left running would outlive its parent. They are cancelled in the order given
    (not a set's, which follows their addresses: a simulation's replay would depend on
    what ran before it in the process)."""
    pending = [t for t in dict.fromkeys(tasks) if not t.done()]
    interrupted = False
    for _ in range(rounds):
        if not pending:
            break
        for task in pending:
            task.cancel()
        try:
            await asyncio.wait(pending, timeout=0.5)
        except asyncio.CancelledError:
            interrupted = True
        pending = [t for t in pending if not t.done()]
    if pending:
        log.warning("tasks did not stop: %s", ", ".join(t.get_name() for t in pending))
    if interrupted:
        raise asyncio.CancelledError
