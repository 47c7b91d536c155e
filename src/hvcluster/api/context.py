"""What every route needs: the store, the key layout, who is serving, and the event log."""

from __future__ import annotations

import copy
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
from fastapi import Body, Depends, Path
from starlette.requests import HTTPConnection

from hvcluster.api.auth import Caller
from hvcluster.api.node_use import NodeUse
from hvcluster.api.views import Skipped
from hvcluster.metrics import AgentMetrics
from hvcluster.models.errors import CorruptValue, InvalidInput, StoreError
from hvcluster.models.event import Event
from hvcluster.models.names import check_name
from hvcluster.store.base import Store
from hvcluster.store.cache import WatchedCache
from hvcluster.store.events import EventLog
from hvcluster.store.keys import Keys
from hvcluster.store.reads import CorruptReporter

log = logging.getLogger(__name__)

EventData = dict[str, str | int | float | bool | None]


@dataclass(frozen=True)
class PeerApi:
    """How this agent calls other agents' APIs (the probes of cluster validation): over
    https when the agents serve TLS, each certificate checked against ``ca`` (a CA file;
    None: the system's CAs)."""

    tls: bool = False
    ca: str | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def client(self, **options: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(verify=ssl.create_default_context(cafile=self.ca), **options)


@dataclass
class ApiContext:
    """One per app; each request gets a copy naming its caller (:meth:`acting_for`)."""

    store: Store
    keys: Keys
    node: str
    caller: Caller | None = None  # the request's checked token; None: the API itself
    peers: PeerApi = field(default_factory=PeerApi)
    metrics: AgentMetrics = field(default_factory=AgentMetrics)  # this agent's own numbers
    node_use: NodeUse = field(default_factory=NodeUse)  # what node views need of each VM
    # The cluster's wall clock, which the controller stamps its records by: a simulation's
    # virtual one there, so that what the API stamps (a node's admin_since, which the
    # controller compares its migrations' times with) reads on the same clock.
    now: Callable[[], float] = time.time
    # This agent's own watched cache of the config, VMs, placements and statuses (the node
    # agent's: the same process), for the reads of the whole cluster on a request's path
    # (admission control); None: read from the store.
    cache: WatchedCache | None = None
    log: EventLog = field(init=False)  # the writer: every change this API makes is logged
    corrupt: CorruptReporter = field(init=False)

    def __post_init__(self) -> None:
        self.corrupt = CorruptReporter(self._corrupt_event)
        self.log = self.event_log()

    @property
    def actor(self) -> str:
        """Who the events this context writes name: the caller's token, and this node."""
        if self.caller is None:
            return f"api@{self.node}"
        return f"token:{self.caller.name}@{self.node}"

    def acting_for(self, caller: Caller) -> ApiContext:
        """This context for one request of ``caller``: the same store, log and reporter."""
        mine = copy.copy(self)
        mine.caller = caller
        return mine

    def forwarded_headers(self) -> dict[str, str]:
        """Headers for asking another agent on the caller's behalf: its own token."""
        if self.caller is None:
            return {}
        return {"Authorization": f"Bearer {self.caller.credential}"}

    async def record(
        self, kind: str, subject: str, reason: str, data: EventData | None = None
    ) -> None:
        """Write one event to the cluster log, as this API.

        Called after the change itself committed: if the log cannot be written now, the
        change still stands, so the failure is logged here rather than answered as an error
        (which would tell the client nothing changed)."""
        event = Event(
            time=self.now(),
            kind=kind,
            subject=subject,
            reason=reason,
            actor=self.actor,
            data=data or {},
        )
        try:
            await self.log.append(event)
        except StoreError as e:
            log.warning("could not log %s %s: %s", kind, subject, e)

    def event_log(self, skipped: list[Skipped] | None = None) -> EventLog:
        """A reader of the cluster log whose corrupt entries are reported (and collected
        into ``skipped`` when given)."""

        def on_corrupt(error: CorruptValue) -> None:
            if skipped is not None:
                skipped.append(Skipped(key=error.key, error=error.reason))
            self.corrupt.report_soon(error)

        return EventLog(self.store, self.keys, on_corrupt=on_corrupt)

    async def _corrupt_event(self, error: CorruptValue, mod_revision: int) -> None:
        await self.record(
            "store.corrupt_value",
            error.key,
            f"skipped a value that does not decode: {error.reason}",
            {"key": error.key, "mod_revision": mod_revision},
        )


def context(request: HTTPConnection) -> ApiContext:
    """The context of this request (or websocket): as its caller (checked by
    ``api.auth.Authorizer``, which every route depends on, before this)."""
    ctx = request.app.state.ctx
    assert isinstance(ctx, ApiContext)
    caller = getattr(request.state, "caller", None)
    return ctx.acting_for(caller) if isinstance(caller, Caller) else ctx


def valid_name(name: str = Path(description="a VM or node name")) -> str:
    """A name from the path, checked as names are (it becomes part of store keys)."""
    try:
        return check_name(name)
    except ValueError as e:
        raise InvalidInput(str(e), field="name") from None


# What a route declares to get them: ``ctx: Ctx``, ``name: ValidName``, and an optional body
# ``request: ActionRequest | None = NO_BODY``.
Ctx = Annotated[ApiContext, Depends(context)]
ValidName = Annotated[str, Depends(valid_name)]
NO_BODY = Body(default=None)
