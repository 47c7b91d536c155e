"""How an agent serves the API (uvicorn): settings that keep floods and slow clients from
hurting the agent, whose event loop also keeps the node's lease.

* At most :data:`MAX_CONNECTIONS` connections are held open: one more is closed as soon as
  it is accepted, so a crowd of clients cannot take every file descriptor of the agent
  (which it needs for etcd, its VMs' QMP sockets, its disks); at the limit, a request on a
  held connection is answered 503 (uvicorn's ``limit_concurrency``). How many requests are
  worked on at once is bounded lower, by :mod:`hvcluster.api.limits` (503 beyond it too):
  a flood costs a short answer each rather than memory and store reads.
* A request head (request line and headers) must be complete within
  :data:`HEAD_TIMEOUT_S` of the connection (or of the first byte of the next request on a
  kept-alive one), else the connection is closed: uvicorn has no such timeout, and a client
  trickling its headers byte by byte (slowloris) would hold its connection, and a slot of
  the limit above, for ever. An unfinished head is held up to :data:`MAX_HEAD_BYTES`
  (h11's limit; past it: 400). The body has its own limits (:mod:`hvcluster.api.limits`).
* A websocket (a VM console) message from a client is at most :data:`MAX_WS_MESSAGE`
  bytes (keystrokes, VNC input events), and an unanswered ping closes it after
  :data:`WS_PING_S` twice over: a console left by a vanished client is freed.
* An idle kept-alive connection is closed after :data:`KEEP_ALIVE_S`; the listen backlog
  holds :data:`BACKLOG` connections not yet accepted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_CONNECTIONS = 1024
HEAD_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 16 * 1024
KEEP_ALIVE_S = 5
BACKLOG = 2048
MAX_WS_MESSAGE = 1024 * 1024
WS_PING_S = 20.0


class Tally:
    """Counts what a flood does many times and says it at most once a minute, so that the
    agent's log (written from its event loop) does not grow by a line per connection."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0
        self.said_at: float | None = None

    def add(self, logger: logging.Logger, now: float) -> None:
        self.count += 1
        if self.said_at is None or now - self.said_at >= 60:
            logger.warning("%s: %d since the last report", self.what, self.count)
            self.said_at, self.count = now, 0


REFUSED = Tally(f"closed connections at once: {MAX_CONNECTIONS} were open")
CUT = Tally(f"cut connections whose request head did not come within {HEAD_TIMEOUT_S:g} s")


class HeadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request head (see the module)."""

    head_timeout_s = HEAD_TIMEOUT_S
    max_connections = MAX_CONNECTIONS
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            REFUSED.add(self.logger, self.loop.time())
            transport.abort()
            return
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self.conn.their_state is h11.IDLE:
            self._arm_head_timer()  # the first bytes of the next request on this connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is complete (or refused)
            self._disarm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            CUT.add(self.logger, self.loop.time())
            self.transport.abort()  # nothing to answer: it has not finished asking


def server_settings() -> dict[str, Any]:
    """Keyword arguments of ``uvicorn.Config`` for an agent's API server."""
    return {
        "http": HeadTimeoutH11Protocol,
        "limit_concurrency": MAX_CONNECTIONS,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "timeout_keep_alive": KEEP_ALIVE_S,
        "backlog": BACKLOG,
        "ws_max_size": MAX_WS_MESSAGE,
        "ws_ping_interval": WS_PING_S,
        "ws_ping_timeout": WS_PING_S,
    }
