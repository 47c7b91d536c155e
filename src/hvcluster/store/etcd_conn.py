"""Connections to etcd: endpoints, gRPC channels, deadlines, fail-over and error translation.

We speak etcd's v3 gRPC API through the stubs ``aetcd`` generates (``aetcd.rpc``), not through
``aetcd.Client``: the client has one timeout for everything, no ``lease`` compare target, one
watch stream shared by all watches that drops them all on an error, and no per-endpoint
status. The stubs give us per-call deadlines and a stream per watch, which is what resuming
a watch at an exact revision needs.

With :class:`EtcdTls` the channels are TLS (``grpc.aio.secure_channel``): the server's
certificate is checked against the given CA and the client presents its own certificate, as
etcd's ``--client-cert-auth`` requires.

Every gRPC error becomes a :class:`StoreError` subclass here, and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]

from hvcluster.models.errors import InvalidInput, LeaseLost, StoreError, StoreUnavailable
from hvcluster.store.etcd_endpoint import ConnectFailed, Endpoint

__all__ = ["ConnectFailed", "Connection", "Endpoint", "EtcdTls", "translate"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_UNAVAILABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}


@dataclass(frozen=True)
class EtcdTls:
    """TLS to etcd: the CA that signed the members' certificates, and this client's
    certificate and key (both or neither; etcd with ``--client-cert-auth`` needs them)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials from the files; a clear error naming the one that is
        missing or unreadable."""
        if (self.cert is None) != (self.key is None):
            field = "key" if self.key is None else "cert"
            raise InvalidInput("a client certificate and its key go together", field)
        ca = _read(self.ca, "ca", "the CA certificate")
        cert = _read(self.cert, "cert", "the client certificate") if self.cert else None
        key = _read(self.key, "key", "the client key") if self.key else None
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )


def _read(path: Path, field: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InvalidInput(f"cannot read {what} {path}: {e.strerror}", field) from None
    if b"-----BEGIN " not in data:
        raise InvalidInput(f"{path} is not a PEM file ({what})", field)
    return data


def scheme_of(endpoint: str) -> str | None:
    """``http``, ``https``, or None for a bare ``host:port``."""
    text = endpoint.strip()
    for scheme in ("http", "https"):
        if text.startswith(f"{scheme}://"):
            return scheme
    return None


def parse_endpoint(endpoint: str) -> str:
    """``127.0.0.1:2379``, ``http://127.0.0.1:2379`` or ``https://...`` -> the gRPC target
    ``127.0.0.1:2379``."""
    text = endpoint.strip()
    text = text.removeprefix("http://").removeprefix("https://").rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInput(
            f"{endpoint!r} is not host:port (e.g. 127.0.0.1:2379 or http://127.0.0.1:2379)",
            "endpoints",
        )
    return text


def parse_endpoints(endpoints: Sequence[str] | str, tls: bool = False) -> list[str]:
    """The gRPC targets of ``endpoints``; an ``https://`` one needs ``tls`` and an
    ``http://`` one refuses it (a scheme that contradicts the settings is a mistake)."""
    if isinstance(endpoints, str):
        endpoints = [e for e in endpoints.split(",") if e.strip()]
    for e in endpoints:
        if scheme_of(e) == "https" and not tls:
            raise InvalidInput(f"{e!r} is a TLS endpoint: give the CA of etcd too", "endpoints")
        if scheme_of(e) == "http" and tls:
            raise InvalidInput(f"{e!r} is plain text, but TLS is configured", "endpoints")
    targets = list(dict.fromkeys(parse_endpoint(e) for e in endpoints))
    if not targets:
        raise InvalidInput("at least one etcd endpoint is needed", "endpoints")
    return targets


def send_refused(error: grpc.aio.AioRpcError) -> bool:
    """True for gRPC's asyncio client failing a stream's write on a call that had already
    ended (e.g. its connection closed as the call began): it reports INTERNAL "Internal
    error from Core" with the failed SendMessageOperation as debug string, over the status
    that ended the call (grpc/grpc#36066). Not an answer of etcd: the message never left."""
    debug = error.debug_error_string() or ""
    return error.code() == grpc.StatusCode.INTERNAL and (
        "SendMessageOperation" in debug or "send_message" in debug.lower()
    )


def translate(
    error: grpc.aio.AioRpcError, target: str, connection_lost: bool = False
) -> StoreError:
    """The one place where a gRPC error becomes one of ours. ``connection_lost``: the
    channel the call ran on lost its connection; a write refused on it (:func:`send_refused`)
    is that loss (the status gRPC overwrote was UNAVAILABLE), any other refused write is
    reported as an error."""
    code, details = error.code(), error.details() or ""
    where = f"etcd at {target}"
    if send_refused(error):
        if connection_lost:
            return StoreUnavailable(f"{where} unavailable: the connection closed as the call began")
        return StoreError(
            f"{where}: gRPC could not send the request, the call had ended (INTERNAL "
            f"{details!r}; the status that ended it is lost: grpc/grpc#36066)"
        )
    if code in _UNAVAILABLE_CODES:
        return StoreUnavailable(f"{where} unavailable: {details or code.name}")
    if "lease not found" in details:
        return LeaseLost(f"{where}: {details}")
    return StoreError(f"{where} refused the request ({code.name}): {details}")


def never_sent(error: grpc.aio.AioRpcError) -> bool:
    """True when the request cannot have reached etcd (no connection was ever made)."""
    details = error.details() or ""
    return error.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details


# A write refused on a call (:func:`send_refused`): how long its channel may take to show
# that its connection closed (gRPC fails the call first, then updates the state).
LOST_WITHIN_S = 0.05


# Told of every request: (operation, answered?, seconds). An agent's metrics.
Observe = Callable[[str, bool, float], None]


class Connection:
    """The endpoints of one etcd cluster, one of which is current; fails over on errors.
    ``observe`` is told how long each :meth:`call` took (fail-over included)."""

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        timeout: float,
        tls: EtcdTls | None = None,
        observe: Observe | None = None,
    ) -> None:
        if timeout <= 0:
            raise InvalidInput(f"must be positive, got {timeout}", "timeout")
        self.timeout = timeout
        self.credentials = tls.credentials() if tls is not None else None
        targets = parse_endpoints(endpoints, tls is not None)
        self.endpoints = [Endpoint(t, self.credentials) for t in targets]
        # Keepalives (``fresh`` calls) have channels of their own: dropping one to dial anew
        # must not break what else runs on that member (a watch, an evidence question).
        self.fresh_endpoints = [Endpoint(t, self.credentials, hedge=True) for t in targets]
        self._extra: dict[str, Endpoint] = {}
        self._current = 0
        self.closed = False
        self.observe = observe
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
            self._extra[target] = Endpoint(target, self.credentials)
        return self._extra[target]

    def check_open(self) -> None:
        if self.closed:
            raise StoreUnavailable("the etcd store is closed")

    async def call(
        self,
        what: str,
        fn: Callable[[Endpoint, float], Awaitable[T]],
        *,
        op: str,
        mutable: bool,
        timeout: float | None = None,
        fresh: bool = False,
    ) -> T:
        """Run ``fn(endpoint, seconds_left)`` on a connected endpoint within the deadline.
        ``what`` names the request in errors, ``op`` its kind to :attr:`observe` (``get``,
        ``txn``, ``keepalive``...: few values, no keys).

        On a connection failure it moves to the next endpoint and tries again, unless the
        request changes state and may have reached etcd: then the outcome is unknown and it
        raises :class:`StoreUnavailable` (the caller re-reads and decides).

        ``fresh`` (a keepalive: the node's proof of life, Safety rule 2) runs on channels of
        its own. One that does not connect within HEDGE_S gets another dial beside it, and
        the first to connect is taken (:meth:`Endpoint.ready`), so a node whose link to
        etcd healed is heard again within about HEDGE_S and a round trip, not after TCP's
        retransmission back-off; no dial is cut short (it may be a TLS handshake a loaded
        host was about to finish). A connected endpoint that does not answer within the
        deadline has its channel dropped (:meth:`Endpoint.reset`): the next try dials anew.
        Not one that connected during the call: the call had only what was left of the
        deadline, which says nothing of the connection (over a late link the handshake takes
        most of it), and dropping it threw a whole handshake away each time; the next
        keepalive has all its time on it, and drops it if it does not answer either.
        """
        if self.observe is None:
            return await self._call(what, fn, mutable, timeout, fresh)
        started, answered = time.monotonic(), False
        try:
            result = await self._call(what, fn, mutable, timeout, fresh)
            answered = True
            return result
        except LeaseLost:  # an answer: the lease is gone
            answered = True
            raise
        finally:
            self.observe(op, answered, time.monotonic() - started)

    async def _call(
        self,
        what: str,
        fn: Callable[[Endpoint, float], Awaitable[T]],
        mutable: bool,
        timeout: float | None,
        fresh: bool,
    ) -> T:
        self.check_open()
        loop = asyncio.get_running_loop()
        budget = self.timeout if timeout is None else timeout
        deadline = loop.time() + budget
        last = "no endpoint tried"
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise StoreUnavailable(f"etcd did not answer {what} within {budget:g}s: {last}")
            ep = self.fresh_endpoints[self._current] if fresh else self.current
            try:
                was_connected = await ep.ready(
                    min(left, self.connect_timeout), fail_fast=self.several
                )
            except TimeoutError as e:
                last = str(e)
                self.rotate()
                if fresh:  # a refusal: dial anew next time, not after gRPC's back-off
                    ep.drop_failed()
                await asyncio.sleep(0.02)  # all may be down: do not spin
                continue
            left = deadline - loop.time()
            try:
                async with asyncio.timeout(max(left, 0.001)):
                    return await fn(ep, max(left, 0.001))
            except TimeoutError:
                self.rotate()
                if fresh and was_connected:
                    ep.reset()
                raise StoreUnavailable(
                    f"etcd at {ep.target} did not answer {what} within {budget:g}s"
                ) from None
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # we are cancelled
                # gRPC cancels a call whose channel was closed (another call's reset):
                # not our cancellation, and it must not end the caller as one would.
                last = f"etcd at {ep.target}: the call's channel was closed"
                if mutable:
                    raise StoreUnavailable(last) from None
                await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
            except grpc.aio.AioRpcError as e:
                lost = send_refused(e) and await ep.lost_connection(LOST_WITHIN_S)
                error = translate(e, ep.target, connection_lost=lost)
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
        for ep in [*self.endpoints, *self.fresh_endpoints, *self._extra.values()]:
            await ep.close()
