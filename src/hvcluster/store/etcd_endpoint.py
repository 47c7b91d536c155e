"""One etcd client URL and its gRPC channel: connecting, and knowing why it could not.

A keepalive's endpoint (``hedge``) never leaves its connecting to one dial: see
:meth:`Endpoint.ready` and docs/architecture.md, "Stalls". :mod:`hvcluster.store.etcd_conn`
moves between endpoints and gives every call its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
from aetcd import rpc

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
# A keepalive's channels (``fresh``) give each connection attempt 2 s to finish: gRPC's
# minimum connect timeout is ``min_reconnect_backoff_ms``, so at 100 ms a TLS handshake that
# a loaded host needs 0.15 s for was cut and begun again (0.4 s to connect; one of 0.3 s took
# 0.8 s, longer than a keepalive's deadline: never). New connections are not left to gRPC's
# back-off: a channel not connected after HEDGE_S gets another dialling beside it
# (:meth:`Endpoint.ready`), so a dial whose SYN was lost in a cut link does not hold up the
# first dial after it heals.
FRESH_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    *(option for option in CHANNEL_OPTIONS if option[0] != "grpc.min_reconnect_backoff_ms"),
    ("grpc.min_reconnect_backoff_ms", 2000),
)
HEDGE_S = 0.1  # a fresh channel not connected after this many seconds: dial another beside it
DIAL_KEEP_S = 1.0  # how long a dial goes on beside newer ones (a SYN lost: TCP resends at 1 s)
POLL_S = 0.02  # how often dials in progress are looked at


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


class Endpoint:
    """One etcd client URL and its (lazily opened) gRPC channel and stubs."""

    def __init__(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None = None,
        hedge: bool = False,
    ) -> None:
        """``hedge``: a keepalive's endpoint, whose connecting is never left waiting on one
        dial (:meth:`ready`)."""
        self.target = target
        self.credentials = credentials
        self.hedge = hedge
        self.options = FRESH_CHANNEL_OPTIONS if hedge else CHANNEL_OPTIONS
        self._channel: grpc.aio.Channel | None = None
        self._dialled = 0.0  # when the channel began (monotonic)
        self._dials: list[tuple[float, grpc.aio.Channel]] = []  # older, still connecting
        self._stubs: dict[str, Any] = {}

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            if self.credentials is None:
                self._channel = grpc.aio.insecure_channel(self.target, options=self.options)
            else:
                self._channel = grpc.aio.secure_channel(
                    self.target, self.credentials, options=self.options
                )
            self._dialled = time.monotonic()
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

    async def ready(self, timeout: float, fail_fast: bool = False) -> bool:
        """Wait until the channel is connected; raise TimeoutError after ``timeout``, or at
        once when the connection is refused if ``fail_fast`` (another endpoint may answer).
        True if it was connected already, False if it connected while we waited."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._adopt_connected()
        channel = self.channel
        state = channel.get_state(try_to_connect=True)
        connected = bool(state == grpc.ChannelConnectivity.READY)
        while state != grpc.ChannelConnectivity.READY:
            failed = state == grpc.ChannelConnectivity.TRANSIENT_FAILURE
            if failed and fail_fast:
                raise await self._connect_failed()
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise TimeoutError
                async with asyncio.timeout(min(left, POLL_S) if self.hedge else left):
                    await channel.wait_for_state_change(state)
            except TimeoutError:
                if self.hedge and loop.time() < deadline:  # a look at the dials
                    self._hedge()
                elif failed:
                    raise await self._connect_failed() from None
                else:
                    raise TimeoutError(
                        f"{self.target} did not answer within {timeout:g}s"
                    ) from None
            channel = self.channel
            state = channel.get_state(try_to_connect=True)
        if self._dials:  # connected: the other dials are of no more use
            self._drop_dials()
        return connected

    async def lost_connection(self, within: float) -> bool:
        """True if the channel is not connected, or leaves READY within ``within`` seconds:
        its connection closed (gRPC may tell a call so before it updates the state)."""
        channel = self._channel
        if channel is None:
            return True
        if channel.get_state() != grpc.ChannelConnectivity.READY:
            return True
        try:
            async with asyncio.timeout(within):
                await channel.wait_for_state_change(grpc.ChannelConnectivity.READY)
        except TimeoutError:
            return False
        return True

    def _drop_dials(self) -> None:
        dials, self._dials = self._dials, []
        for _, channel in dials:
            _close_later(channel)

    def _hedge(self) -> None:
        """Take a dial that connected meanwhile; else, when the channel has dialled for
        HEDGE_S, dial again beside it (its dial goes on: it may be a handshake about to
        finish)."""
        if self._adopt_connected():
            return
        if self._channel is None or time.monotonic() - self._dialled < HEDGE_S:
            return
        if self._channel.get_state() == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            self.reset()  # it failed (refused): nothing to wait for
        else:
            self._dials.append((self._dialled, self._channel))
            self._channel, self._stubs = None, {}
        self._prune()

    def _adopt_connected(self) -> bool:
        """If an older dial connected, make it the channel (dropping the current one)."""
        for i, (dialled, channel) in enumerate(self._dials):
            if channel.get_state() == grpc.ChannelConnectivity.READY:
                del self._dials[i]
                self.reset()
                self._channel, self._dialled = channel, dialled
                return True
        return False

    def _prune(self) -> None:
        """Close the dials older than DIAL_KEEP_S, and those that failed."""
        now, kept = time.monotonic(), []
        failed = grpc.ChannelConnectivity.TRANSIENT_FAILURE
        for dialled, channel in self._dials:
            if now - dialled < DIAL_KEEP_S and channel.get_state() != failed:
                kept.append((dialled, channel))
            else:
                _close_later(channel)
        self._dials = kept

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

    def drop_failed(self) -> None:
        """Drop the channel if its dial failed (refused, a handshake refused): gRPC would
        dial again only after its back-off. One still connecting is left to go on."""
        failed = grpc.ChannelConnectivity.TRANSIENT_FAILURE
        if self._channel is not None and self._channel.get_state() == failed:
            self.reset()

    async def close(self) -> None:
        channel, self._channel, self._stubs = self._channel, None, {}
        dials, self._dials = self._dials, []
        for c in [channel, *(c for _, c in dials)]:
            if c is not None:
                with contextlib.suppress(Exception):
                    await c.close(grace=None)

    def reset(self) -> None:
        """Drop the channel, so the next call dials a new TCP connection. After a cut link
        heals, the old connection's data waits for TCP's next retransmission (0.2 s after
        the loss, then 0.4, 0.8, 1.6 s later) and a connection attempt whose SYN was lost
        for its retransmission (1 s, then 2 s later): a new connection goes through within
        a round trip. Calls still running on the old channel fail (a watch resumes). The
        old channel closes in the background: the caller's own deadline may be up."""
        channel, self._channel, self._stubs = self._channel, None, {}
        if channel is not None:
            _close_later(channel)


_closing: set[asyncio.Task[None]] = set()  # channels being closed after a reset


def _close_later(channel: grpc.aio.Channel) -> None:
    task = asyncio.get_running_loop().create_task(_close(channel))
    _closing.add(task)
    task.add_done_callback(_closing.discard)


async def _close(channel: grpc.aio.Channel) -> None:
    with contextlib.suppress(Exception):
        await channel.close(grace=None)
