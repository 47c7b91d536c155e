"""Connections to etcd: endpoints, gRPC channels, deadlines, fail-over and error translation.

We speak etcd's v3 gRPC API through the stubs ``aetcd`` generates (``aetcd.rpc``), not through
``aetcd.Client``: the client has one timeout for everything, no ``lease`` compare target, one
watch stream shared by all watches that drops them all on an error, and no per-endpoint
status. The stubs give us per-call deadlines and a stream per watch, which is what resuming
a watch at an exact revision needs.

Every gRPC error becomes a :class:`StoreError` subclass here, and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
from aetcd import rpc

from hvcluster.models.errors import InvalidInput, LeaseLost, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# Keepalive pings find a stream whose server froze (SIGSTOP, a dead link) without waiting for
# TCP. etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time), hence 6 s.
# Reconnect back-off is capped at 1 s so that a restarted etcd is found again quickly.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 6000),
    ("grpc.keepalive_timeout_ms", 4000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
)

_UNAVAILABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}


def parse_endpoint(endpoint: str) -> str:
    """``127.0.0.1:2379`` or ``http://127.0.0.1:2379`` -> the gRPC target ``127.0.0.1:2379``."""
    text = endpoint.strip()
    if text.startswith("https://"):
        raise InvalidInput(f"{endpoint!r}: TLS endpoints are not supported yet", "endpoints")
    text = text.removeprefix("http://").rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInput(
            f"{endpoint!r} is not host:port (e.g. 127.0.0.1:2379 or http://127.0.0.1:2379)",
            "endpoints",
        )
    return text


def parse_endpoints(endpoints: Sequence[str] | str) -> list[str]:
    if isinstance(endpoints, str):
        endpoints = [e for e in endpoints.split(",") if e.strip()]
    targets = list(dict.fromkeys(parse_endpoint(e) for e in endpoints))
    if not targets:
        raise InvalidInput("at least one etcd endpoint is needed", "endpoints")
    return targets


def translate(error: grpc.aio.AioRpcError, target: str) -> StoreError:
    """The one place where a gRPC error becomes one of ours."""
    code, details = error.code(), error.details() or ""
    where = f"etcd at {target}"
    if code in _UNAVAILABLE_CODES:
        return StoreUnavailable(f"{where} unavailable: {details or code.name}")
    if "lease not found" in details:
        return LeaseLost(f"{where}: {details}")
    return StoreError(f"{where} refused the request ({code.name}): {details}")


def never_sent(error: grpc.aio.AioRpcError) -> bool:
    """True when the request cannot have reached etcd (no connection was ever made)."""
    details = error.details() or ""
    return error.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details


class Endpoint:
    """One etcd client URL and its (lazily opened) gRPC channel and stubs."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._channel: grpc.aio.Channel | None = None
        self._stubs: dict[str, Any] = {}

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
            self._stubs = {}
        return self._channel

    def stub(self, kind: str) -> Any:
        """``kv``, ``lease``, ``watch``, ``cluster`` or ``maintenance``."""
        channel = self.channel
        if kind not in self._stubs:
            factory = {
                "kv": rpc.KVStub,
                "lease": rpc.LeaseStub,
                "watch": rpc.WatchStub,
                "cluster": rpc.ClusterStub,
                "maintenance": rpc.MaintenanceStub,
            }[kind]
            self._stubs[kind] = factory(channel)
        return self._stubs[kind]

    async def ready(self, timeout: float, fail_fast: bool = False) -> None:
        """Wait until the channel is connected; raise TimeoutError after ``timeout``, or at
        once when the connection is refused if ``fail_fast`` (another endpoint may answer)."""
        channel = self.channel
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        state = channel.get_state(try_to_connect=True)
        while state != grpc.ChannelConnectivity.READY:
            refused = state == grpc.ChannelConnectivity.TRANSIENT_FAILURE
            if refused and fail_fast:
                raise TimeoutError(f"cannot connect to {self.target} (refused or down)")
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise TimeoutError
                async with asyncio.timeout(left):
                    await channel.wait_for_state_change(state)
            except TimeoutError:
                if refused:
                    raise TimeoutError(
                        f"cannot connect to {self.target} (refused or down)"
                    ) from None
                raise TimeoutError(f"{self.target} did not answer within {timeout:g}s") from None
            state = channel.get_state(try_to_connect=True)

    async def close(self) -> None:
        channel, self._channel, self._stubs = self._channel, None, {}
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close(grace=None)


class Connection:
    """The endpoints of one etcd cluster, one of which is current; fails over on errors."""

    def __init__(self, endpoints: Sequence[str] | str, timeout: float) -> None:
        if timeout <= 0:
            raise InvalidInput(f"must be positive, got {timeout}", "timeout")
        self.timeout = timeout
        self.endpoints = [Endpoint(t) for t in parse_endpoints(endpoints)]
        self._extra: dict[str, Endpoint] = {}
        self._current = 0
        self.closed = False
        # With several endpoints, give each a share of the deadline to connect.
        n = len(self.endpoints)
        self.connect_timeout = timeout if n == 1 else max(0.5, timeout / n)

    @property
    def several(self) -> bool:
        return len(self.endpoints) > 1

    @property
    def current(self) -> Endpoint:
        return self.endpoints[self._current]

    def rotate(self) -> None:
        self._current = (self._current + 1) % len(self.endpoints)

    def endpoint_for(self, target: str) -> Endpoint:
        """The endpoint object for ``target``, opening one for a URL not configured."""
        for ep in self.endpoints:
            if ep.target == target:
                return ep
        if target not in self._extra:
            self._extra[target] = Endpoint(target)
        return self._extra[target]

    def check_open(self) -> None:
        if self.closed:
            raise StoreUnavailable("the etcd store is closed")

    async def call(
        self,
        what: str,
        fn: Callable[[Endpoint, float], Awaitable[T]],
        *,
        mutable: bool,
        timeout: float | None = None,
    ) -> T:
        """Run ``fn(endpoint, seconds_left)`` on a connected endpoint within the deadline.

        On a connection failure it moves to the next endpoint and tries again, unless the
        request changes state and may have reached etcd: then the outcome is unknown and it
        raises :class:`StoreUnavailable` (the caller re-reads and decides).
        """
        self.check_open()
        loop = asyncio.get_running_loop()
        budget = self.timeout if timeout is None else timeout
        deadline = loop.time() + budget
        last = "no endpoint tried"
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise StoreUnavailable(f"etcd did not answer {what} within {budget:g}s: {last}")
            ep = self.current
            try:
                await ep.ready(min(left, self.connect_timeout), fail_fast=self.several)
            except TimeoutError as e:
                last = str(e)
                self.rotate()
                await asyncio.sleep(0.02)  # all may be down: do not spin
                continue
            left = deadline - loop.time()
            try:
                async with asyncio.timeout(max(left, 0.001)):
                    return await fn(ep, max(left, 0.001))
            except TimeoutError:
                self.rotate()
                raise StoreUnavailable(
                    f"etcd at {ep.target} did not answer {what} within {budget:g}s"
                ) from None
            except grpc.aio.AioRpcError as e:
                error = translate(e, ep.target)
                if not isinstance(error, StoreUnavailable):
                    raise error from None
                self.rotate()
                if mutable and not never_sent(e):
                    raise error from None
                last = str(error)
                await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
            except grpc.aio.UsageError as e:
                self.check_open()
                raise StoreUnavailable(f"etcd at {ep.target}: {e}") from None

    async def close(self) -> None:
        self.closed = True
        for ep in [*self.endpoints, *self._extra.values()]:
            await ep.close()
