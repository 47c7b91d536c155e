"""Requests are bounded in number, and their bodies in size and time, before any route
sees them.

The API is served on the agent's own event loop, the loop that also keeps the node's lease
and feeds its watchdog. A body of hundreds of MB read into memory and parsed as JSON there
would stall that loop for seconds, long enough for the watchdog to kill every VM of the host;
a thousand requests at once would hold a thousand bodies and store reads. So
:class:`RequestLimits` (an ASGI middleware, outermost but for Starlette's error handler):

* answers 503 at once, reading nothing, when :data:`MAX_IN_PROGRESS` requests are already
  in progress (admitted, their answer not yet all handed to the server; an event stream
  such as ``/events/follow`` stops counting once it starts);
* refuses at once with 413 a request whose ``Content-Length`` exceeds :data:`MAX_BODY_BYTES`,
  without reading its body;
* counts the bytes of every other body as they stream in (chunked ones too) and refuses
  with 413 as soon as the count passes the limit, so at most the limit is ever held;
* gives the whole body :data:`BODY_TIMEOUT_S` to arrive, else 408: a client trickling its
  body byte by byte does not hold a request slot for ever (its headers are bounded in time
  by :mod:`hvcluster.api.serving`).

Only then is the route called, with the body it was sent (already read, at most the limit).
The answers have the API's error shape, ``{"error": ..., "field": "body"}``.

The answer goes out in pieces of :data:`SEND_CHUNK` bytes, each waiting until the client has
taken the previous ones (the server's flow control): a client that reads slowly, or not at
all, holds at most one piece in the server's buffers, and its request slot, not a whole
answer of many MB per connection. A piece not taken within :data:`SEND_TIMEOUT_S` ends the
answer there (the connection is closed).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hvcluster.api.errors import error_response

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # the largest VM spec is a few KiB
BODY_TIMEOUT_S = 30.0
MAX_IN_PROGRESS = 64
SEND_CHUNK = 64 * 1024
SEND_TIMEOUT_S = 30.0


class _SlowReader(Exception):
    """The client did not take a piece of its answer in time."""


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``, or None when it has none (a chunked body).
    The HTTP server has already refused a malformed one."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class RequestLimits:
    """The ASGI middleware described in the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int = MAX_BODY_BYTES,
        body_timeout_s: float = BODY_TIMEOUT_S,
        max_in_progress: int = MAX_IN_PROGRESS,
        send_timeout_s: float = SEND_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.max_in_progress = max_in_progress
        self.send_timeout_s = send_timeout_s
        self.in_progress = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.max_in_progress:
            message = f"{self.in_progress} requests in progress already; try again shortly"
            response = error_response(503, message)
            response.headers.update({"retry-after": "1", "connection": "close"})
            await response(scope, receive, send)
            return
        self.in_progress += 1
        counted = True

        def done() -> None:
            nonlocal counted
            if counted:
                counted = False
                self.in_progress -= 1

        async def send_paced(message: Message) -> None:
            if message["type"] == "http.response.body":
                await self._send_body(send, message)
                if not message.get("more_body", False):
                    done()
                return
            if message["type"] == "http.response.start" and _event_stream(message):
                done()
            await send(message)

        try:
            await self._limited(scope, receive, send_paced)
        except _SlowReader:
            log.info("gave up answering %s from %s: it reads too slowly", scope.get("path"),
                     _client(scope))  # fmt: skip
        finally:
            done()

    async def _send_body(self, send: Send, message: Message) -> None:
        """Hand ``message``'s body to the server a piece at a time (see the module)."""
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        start = 0
        while True:
            piece = body[start : start + SEND_CHUNK]
            start += SEND_CHUNK
            last = start >= len(body)
            try:
                async with asyncio.timeout(self.send_timeout_s):
                    await send(
                        {"type": "http.response.body", "body": piece, "more_body": more or not last}
                    )
            except TimeoutError:
                raise _SlowReader() from None
            if last:
                return

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            declared = declared_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                raise self._too_large(f"Content-Length {declared}")
            body = await self._read_body(receive)
        except _Refused as refused:
            log.warning(
                "refused %s %s from %s: %s",
                scope.get("method"),
                scope.get("path"),
                _client(scope),
                refused.message,
            )
            response = error_response(refused.status, refused.message, "body")
            response.headers["connection"] = "close"  # the rest of the body is never read
            await response(scope, receive, send)
            return
        if body is None:
            return  # the client went away before its body was complete
        await self.app(scope, _replay(body, receive), send)

    def _too_large(self, what: str) -> _Refused:
        limit = self.max_body_bytes
        return _Refused(
            413, f"request body too large: {what}, the limit is {limit} bytes ({limit >> 10} KiB)"
        )

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, counted as it comes; None if the client disconnected first."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        raise self._too_large(f"more than {self.max_body_bytes} bytes sent")
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            raise _Refused(
                408,
                f"request body not received within {self.body_timeout_s:g} s ({size} bytes came)",
            ) from None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body read already, then what the server says next
    (a disconnect, which streaming routes wait for)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _event_stream(start: Message) -> bool:
    return any(
        name == b"content-type" and value.startswith(b"text/event-stream")
        for name, value in start.get("headers", ())
    )


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"
