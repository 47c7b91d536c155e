"""``/api/v1/events``: the cluster log, the latest N, and a live follow (Server-Sent Events).

The follow stream is a store watch on ``events/`` from a revision: each message carries the
event's revision as its SSE ``id``, so a client that reconnects with ``Last-Event-ID`` (or
``?since=<id + 1>``) misses nothing and sees nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from hvcluster.api.context import ApiContext, Ctx
from hvcluster.api.views import EventList, EventView, Skipped
from hvcluster.models.errors import InvalidInput
from hvcluster.store.base import WatchCompacted
from hvcluster.store.events import LoggedEvent

router = APIRouter(prefix="/events", tags=["events"])

REVISION_MAX = 2**63 - 1  # etcd's revisions are int64: a larger one cannot even be asked
HEARTBEAT_S = 15.0  # an SSE comment this often keeps proxies and idle clients honest
QUEUE = 1000


def _view(logged: LoggedEvent) -> EventView:
    return EventView(seq=logged.seq, revision=logged.revision, event=logged.event)


@router.get("", response_model=EventList)
async def list_events(
    ctx: Ctx, limit: int = Query(50, ge=1, le=10_000, description="how many of the latest events")
) -> EventList:
    """The latest events, oldest first. Follow on with ``/events/follow?since=<revision + 1>
    &after=<last seq>``: the revision is read before the events, so nothing falls between."""
    revision = await ctx.store.revision()
    skipped: list[Skipped] = []
    found = await ctx.event_log(skipped).recent(limit)
    return EventList(events=[_view(e) for e in found], skipped=skipped, revision=revision)


def _start_revision(since: int | None, last_event_id: str | None) -> int | None:
    if since is not None:
        return since
    if last_event_id:
        try:
            revision = int(last_event_id)
        except ValueError:
            revision = -1
        if not 0 <= revision < REVISION_MAX:
            raise InvalidInput(
                f"must be an event revision, got {last_event_id[:40]!r}", field="Last-Event-ID"
            )
        return revision + 1
    return None


@router.get("/follow", response_class=StreamingResponse)
async def follow_events(
    request: Request,
    ctx: Ctx,
    since: int | None = Query(
        None,
        ge=1,
        le=REVISION_MAX,
        description="first store revision to send (default: what comes next)",
    ),
    after: int = Query(
        0, ge=0, le=REVISION_MAX, description="skip events up to this sequence number"
    ),
    count: int | None = Query(None, ge=1, description="end the stream after this many"),
) -> StreamingResponse:
    """A text/event-stream of new events: ``id: <revision>``, ``event: event``,
    ``data: <EventView JSON>``. A compacted start revision ends it with ``event: error``."""
    start = _start_revision(since, request.headers.get("last-event-id"))
    if start is None:
        start = await ctx.store.revision() + 1  # read now: a store failure is a 503
    return StreamingResponse(
        _stream(ctx, start, after, count),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _message(kind: str, data: object, id_: int | None = None) -> str:
    head = f"id: {id_}\n" if id_ is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _stream(ctx: ApiContext, start: int, after: int, count: int | None) -> AsyncIterator[str]:
    queue: asyncio.Queue[LoggedEvent | Exception] = asyncio.Queue(QUEUE)

    async def pump() -> None:
        try:
            async for logged in ctx.event_log().follow(start):
                await queue.put(logged)
        except Exception as e:
            await queue.put(e)

    task = asyncio.create_task(pump())
    sent = 0
    try:
        yield f": following events from revision {start}\n\n"
        while count is None or sent < count:
            try:
                item = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except TimeoutError:
                yield ": ping\n\n"
                continue
            if isinstance(item, WatchCompacted):
                yield _message("error", {"error": str(item), "field": "since"})
                return
            if isinstance(item, Exception):
                yield _message("error", {"error": f"the event watch failed: {item}"})
                return
            if item.seq <= after:
                continue
            yield _message("event", _view(item).model_dump(mode="json"), item.revision)
            sent += 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
