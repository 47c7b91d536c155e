"""One translation of the error tree to HTTP, for every route.

The body is always ``{"error": "<one sentence>", "field": "<what was wrong>" | null}``:

* :class:`Unauthenticated` (no, bad, expired token) -> 401, with ``WWW-Authenticate: Bearer``
* :class:`Forbidden` (a role below the route's)  -> 403, naming the role needed
* :class:`InvalidInput` and request validation  -> 422, naming the field
* :class:`NotFound`                              -> 404
* :class:`Conflict` (and illegal transitions)    -> 409
* :class:`CorruptValue` (one object asked for)   -> 409: it cannot be read, but it can be deleted
* :class:`StoreError` (unavailable, ...)         -> 503: state is unknown, nothing was changed
* anything else                                  -> 500, logged with its traceback

A websocket (a console) refused before it is accepted gets the same status and body as an
HTTP answer to its handshake (the ASGI "websocket denial response"; a server without it
closes the handshake with 403).

Before any route, :mod:`hvcluster.api.limits` answers in the same shape: 413 for a body over
the limit and 408 for one that does not arrive in time (``"field": "body"``), 503 when too
many requests are in progress.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError, WebSocketRequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ExceptionHandler
from starlette.websockets import WebSocket

from hvcluster.models.errors import (
    Conflict,
    CorruptValue,
    Forbidden,
    HvcError,
    InvalidInput,
    NotFound,
    StoreError,
    Unauthenticated,
)

log = logging.getLogger(__name__)

# Where FastAPI says an input came from; the client only cares about the field inside it.
_SOURCES = {"body", "query", "path", "header", "cookie"}


def error_response(status: int, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status)


def status_of(error: HvcError) -> int:
    if isinstance(error, Unauthenticated):
        return 401
    if isinstance(error, Forbidden):
        return 403
    if isinstance(error, InvalidInput):
        return 422
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, Conflict | CorruptValue):
        return 409
    if isinstance(error, StoreError):
        return 503
    return 500


def _field(loc: Sequence[int | str]) -> str | None:
    parts = [str(p) for p in loc]
    if parts and parts[0] in _SOURCES:
        parts = parts[1:]
    return ".".join(parts) or None


def _message(item: dict[str, Any] | Any) -> str:
    msg = str(item.get("msg", "invalid value"))
    # pydantic prefixes errors raised in our validators; the sentence is ours.
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return msg


ERRORS_SAID = 10  # problems named in one answer; the rest are counted


def describe_errors(errors: Sequence[Any]) -> tuple[str, str | None]:
    """One line naming the problems (``memory_mib: Input should be ...``), at most
    :data:`ERRORS_SAID` of them (a body of thousands of bad items gets a short answer, not
    one larger than itself); the first field."""
    parts: list[str] = []
    first: str | None = None
    for i, item in enumerate(errors[:ERRORS_SAID]):
        field = _field(item.get("loc", ()))
        if i == 0:
            first = field
        parts.append(f"{field}: {_message(item)}" if field else _message(item))
    if len(errors) > ERRORS_SAID:
        parts.append(f"and {len(errors) - ERRORS_SAID} more problems")
    return ("; ".join(parts) or "invalid input"), first


def _what(conn: HTTPConnection) -> str:
    """``METHOD /path`` of a request, ``WEBSOCKET /path`` of a websocket."""
    method = conn.scope.get("method", "WEBSOCKET")
    return f"{method} {conn.url.path}"


async def _answer(conn: HTTPConnection, response: JSONResponse) -> Response | None:
    """``response`` for a request, which Starlette sends; a websocket's handshake is refused
    with it here, and nothing is returned: Starlette would send a returned response again,
    a second answer to one handshake (the server raised on it, and logged it as an error)."""
    if not isinstance(conn, WebSocket):
        return response
    try:
        await conn.send_denial_response(response)
    except RuntimeError:  # the server cannot answer a handshake with a response
        await conn.close(1008, str(response.status_code))
    return None


def install_error_handlers(app: FastAPI) -> None:
    async def on_hvc_error(request: HTTPConnection, exc: Exception) -> Response | None:
        assert isinstance(exc, HvcError)
        status = status_of(exc)
        if status == 500:
            log.error("unexpected %s on %s: %s", type(exc).__name__, _what(request), exc)
        field = exc.field if isinstance(exc, InvalidInput) else None
        if isinstance(exc, CorruptValue):
            field = exc.key
        response = error_response(status, str(exc), field)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="hvcluster"'
        return await _answer(request, response)

    async def on_validation(request: HTTPConnection, exc: Exception) -> Response | None:
        assert isinstance(
            exc, RequestValidationError | WebSocketRequestValidationError | ValidationError
        )
        message, field = describe_errors(exc.errors())
        return await _answer(request, error_response(422, message, field))

    async def on_http(request: HTTPConnection, exc: Exception) -> Response | None:
        assert isinstance(exc, HTTPException)
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such API path: {_what(request)}"
        return await _answer(request, error_response(exc.status_code, message))

    async def on_unexpected(request: HTTPConnection, exc: Exception) -> Response | None:
        log.exception("unhandled error on %s", _what(request))
        return await _answer(
            request, error_response(500, f"internal error: {type(exc).__name__}: {exc}")
        )

    # Starlette calls each handler for requests and websockets alike, while its types tell
    # the two apart (a response returned; None for a websocket): hence the casts.
    handlers = [
        (HvcError, on_hvc_error),
        (HTTPException, on_http),
        (RequestValidationError, on_validation),
        (WebSocketRequestValidationError, on_validation),
        (ValidationError, on_validation),
        (Exception, on_unexpected),
    ]
    for kind, handler in handlers:
        app.add_exception_handler(kind, cast(ExceptionHandler, handler))
