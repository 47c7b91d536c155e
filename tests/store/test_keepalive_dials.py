"""A keepalive connects as soon as etcd can be reached, whatever state its dials were in
(Safety rule 2's "reconnect", docs/architecture.md "Stalls"): a TLS handshake that a loaded
host needs longer for is not cut short and begun again, and a dial lost in a cut link does
not hold up the first one after the link heals."""

from __future__ import annotations

import asyncio
import time

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
import pytest

from hvcluster.lab.etcd import EtcdCluster
from hvcluster.models.errors import StoreError, StoreUnavailable
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.etcd_conn import translate
from tests.etcd_fixtures import store_tls
from tests.store.proxy import TcpProxy

pytestmark = [
    pytest.mark.etcd,
    pytest.mark.timeout(60),
]

KEEPALIVE_S = 0.45  # a keepalive's own deadline, as the agent's (0.9 x its 0.5 s interval)


async def confirmed_after(store: EtcdStore, lease: int, within: float) -> float | None:
    """Keepalives back to back, as the agent sends them while failing: seconds until the
    first one confirmed, None if none was within ``within``."""
    began = time.monotonic()
    while time.monotonic() - began < within:
        try:
            await store.keepalive(lease, timeout=KEEPALIVE_S)
            return time.monotonic() - began
        except StoreUnavailable:
            await asyncio.sleep(0.05)
    return None


async def test_a_slow_tls_handshake_is_let_finish(etcd_tls_session: EtcdCluster) -> None:
    """Every reply 0.3 s late (the handshake's too): gRPC's connect timeout of 100 ms cut
    each attempt and began again, and a keepalive never connected (about 0.8 s to connect
    once, longer than its deadline, and each deadline dropped the dial)."""
    direct = EtcdStore(etcd_tls_session.endpoints, timeout=5, tls=store_tls(etcd_tls_session))
    proxy = await TcpProxy(etcd_tls_session.endpoints[0], delay_s=0.3).start()
    slow = EtcdStore([proxy.endpoint], timeout=5, tls=store_tls(etcd_tls_session))
    try:
        lease = await direct.grant(30)
        took = await confirmed_after(slow, lease.id, within=5.0)
        assert took is not None, "no keepalive confirmed in 5 s over a 0.3 s slow link"
        print(f"first keepalive confirmed after {took:.2f}s")
        # the handshake's round trips (each 0.3 s) and the keepalive's, on the first dials
        assert took < 2.5, f"first keepalive confirmed after {took:.2f}s"
    finally:
        await slow.close()
        await direct.close()
        await proxy.close()


async def test_a_healed_link_is_heard_within_a_dial(etcd_tls_session: EtcdCluster) -> None:
    """While held, dials are accepted and never answered (their TLS handshakes hang, as a
    lost SYN's connect); once released, a keepalive is confirmed within a hedge and a round
    trip. Each dial now has 2 s (the test above), so this is the dial begun beside the stuck
    one every HEDGE_S, not gRPC giving up on it (its deadline, or TCP's retransmission)."""
    proxy = await TcpProxy(etcd_tls_session.endpoints[0]).start()
    store = EtcdStore([proxy.endpoint], timeout=5, tls=store_tls(etcd_tls_session))
    try:
        lease = await store.grant(30)
        await store.keepalive(lease.id, timeout=KEEPALIVE_S)
        heard = []
        for i in range(5):
            proxy.hold = True
            await proxy.cut()
            trying = asyncio.create_task(confirmed_after(store, lease.id, within=5.0))
            began = time.monotonic()
            await asyncio.sleep(1.0 + 0.11 * i)  # released at a different point of a dial
            proxy.hold = False
            released = time.monotonic()
            took = await trying
            assert took is not None, f"round {i}: no keepalive confirmed after the heal"
            heard.append(began + took - released)
        # (the last dial gave up at its deadline, 0.45 s, and the next one went through)
        print("confirmed after the heal:", [round(h, 3) for h in heard])
        assert max(heard) < 0.3, f"confirmed after the heal: {[round(h, 2) for h in heard]}"
    finally:
        await store.close()
        await proxy.close()


def test_a_write_refused_as_its_connection_closed_is_unavailable() -> None:
    """A keepalive begun as its connection closed: gRPC's asyncio client fails the write
    with INTERNAL "Internal error from Core" over the call's UNAVAILABLE (grpc/grpc#36066;
    seen after a cut, about 1 call in 200). On a channel that lost its connection that is
    what it is; elsewhere, and a server's own INTERNAL, stay errors."""
    refused = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        "Internal error from Core",
        'Failed "execute_batch": (<grpc._cython.cygrpc.SendMessageOperation object>,)',
    )
    lost = translate(refused, "127.0.0.1:2379", connection_lost=True)
    assert isinstance(lost, StoreUnavailable)
    kept = translate(refused, "127.0.0.1:2379", connection_lost=False)
    assert type(kept) is StoreError and "grpc/grpc#36066" in str(kept)
    server = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        "etcdserver: corrupt cluster",
        "INTERNAL:etcdserver: corrupt cluster",
    )
    assert type(translate(server, "127.0.0.1:2379", connection_lost=True)) is StoreError
