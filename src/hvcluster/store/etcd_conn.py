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
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
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
# Each channel has its own connections (a local subchannel pool): gRPC otherwise shares one
# TCP connection among all channels of a process to the same address, so the liveness
# thread's client would wait behind the main loop's, and a channel closed to dial anew
# (:meth:`Endpoint.reset`) would get the old connection back.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.use_local_subchannel_pool", 1),
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


def translate(error: grpc.aio.AioRpcError, target: str) -> StoreError:
    """The one place where a gRPC error becomes one of ours."""
    code, details = error.code(), error.details() or ""
    where = f"etcd at {target}"
    if code in _UNAVAILABLE_CODES:
        return StoreUnavailable(f"{where} unavailable: {details or code.name}")
    if "lease not found" in details:
        return LeaseLost(f"{where}: {details}")
    return StoreError(f"{where} refused the request ({code.name}): {details}")


class ConnectFailed(TimeoutError):
    """A channel could not connect. ``refused``: the host answered that nothing listens on
    the port (its etcd is not running), as opposed to no answer or a TLS failure, which
    say nothing about whether the member runs."""

    def __init__(self, message: str, refused: bool) -> None:
        super().__init__(message)
        self.refused = refused


def connect_error(details: str, tls: bool) -> tuple[str, bool]:
    """(a sentence saying why, refused?) from gRPC's last connection error."""
    text = details.lower()
    if "connection refused" in text:
        return "connection refused (no etcd listens there)", True
    if "certificate_verify_failed" in text or ("handshake failed" in text and tls):
        return (
            "TLS handshake failed: its certificate is not signed by the CA we were given, "
            f"or does not name the address we dialled ({details})",
            False,
        )
    if tls and ("tsi_data_corrupted" in text or "bad_certificate" in text):
        return (
            "etcd refused our TLS client certificate (none given, or not signed by a CA it "
            f"trusts) ({details})",
            False,
        )
    if tls and "handshake read failed" in text:
        return f"the TLS handshake broke off: does it speak TLS? ({details})", False
    if not tls and "socket closed" in text:
        return f"it closed the connection at once: does it expect TLS? ({details})", False
    return details, False


def never_sent(error: grpc.aio.AioRpcError) -> bool:
    """True when the request cannot have reached etcd (no connection was ever made)."""
    details = error.details() or ""
    return error.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details


class Endpoint:
    """One etcd client URL and its (lazily opened) gRPC channel and stubs."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None) -> None:
        self.target = target
        self.credentials = credentials
        self._channel: grpc.aio.Channel | None = None
        self._stubs: dict[str, Any] = {}

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            if self.credentials is None:
                self._channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
            else:
                self._channel = grpc.aio.secure_channel(
                    self.target, self.credentials, options=CHANNEL_OPTIONS
                )
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
            failed = state == grpc.ChannelConnectivity.TRANSIENT_FAILURE
            if failed and fail_fast:
                raise await self._connect_failed()
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise TimeoutError
                async with asyncio.timeout(left):
                    await channel.wait_for_state_change(state)
            except TimeoutError:
                if failed:
                    raise await self._connect_failed() from None
                raise TimeoutError(f"{self.target} did not answer within {timeout:g}s") from None
            state = channel.get_state(try_to_connect=True)

    async def _connect_failed(self) -> ConnectFailed:
        """Why the channel is in TRANSIENT_FAILURE: gRPC keeps the last connection error and
        fails a call at once with it (a refused port, a TLS certificate refused by either
        side, a plain-text peer), which says much more than the state alone."""
        try:
            await self.stub("maintenance").Status(rpc.StatusRequest(), timeout=0.5)
        except grpc.aio.AioRpcError as e:
            details = e.details() or e.code().name
        else:
            details = "it answered when asked again"
        why, refused = connect_error(details, self.credentials is not None)
        return ConnectFailed(f"cannot connect to {self.target}: {why}", refused)

    async def close(self) -> None:
        channel, self._channel, self._stubs = self._channel, None, {}
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close(grace=None)

    def reset(self) -> None:
        """Drop the channel, so the next call dials a new TCP connection. After a cut link
        heals, the old connection's data waits for TCP's next retransmission (0.2 s after
        the loss, then 0.4, 0.8, 1.6 s later) and a connection attempt whose SYN was lost
        for its retransmission (1 s, then 2 s later): a new connection goes through within
        a round trip. Calls still running on the old channel fail (a watch resumes). The
        old channel closes in the background: the caller's own deadline may be up."""
        channel, self._channel, self._stubs = self._channel, None, {}
        if channel is not None:
            task = asyncio.get_running_loop().create_task(_close(channel))
            _closing.add(task)
            task.add_done_callback(_closing.discard)


_closing: set[asyncio.Task[None]] = set()  # channels being closed after a reset


async def _close(channel: grpc.aio.Channel) -> None:
    with contextlib.suppress(Exception):
        await channel.close(grace=None)


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
        self.fresh_endpoints = [Endpoint(t, self.credentials) for t in targets]
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
        its own; an endpoint that does not connect, or does not answer, within the deadline
        has its channel dropped (:meth:`Endpoint.reset`), so the next try dials anew rather
        than waiting on TCP's retransmission back-off: a node whose link to etcd healed is
        heard again at its next keepalive, not seconds later. (Not sooner: a dial cut short
        to try again may be a TLS handshake that a loaded host was about to finish.)
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
                await ep.ready(min(left, self.connect_timeout), fail_fast=self.several)
            except TimeoutError as e:
                last = str(e)
                self.rotate()
                if fresh:  # a dial whose SYN was lost, or a refusal (gRPC's back-off)
                    ep.reset()
                await asyncio.sleep(0.02)  # all may be down: do not spin
                continue
            left = deadline - loop.time()
            try:
                async with asyncio.timeout(max(left, 0.001)):
                    return await fn(ep, max(left, 0.001))
            except TimeoutError:
                self.rotate()
                if fresh:
                    ep.reset()
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
        for ep in [*self.endpoints, *self.fresh_endpoints, *self._extra.values()]:
            await ep.close()
