"""Watches on etcd: one gRPC stream per watch, resumed after any interruption.

After a connection error, a member losing its leader or an etcd restart the watch opens a
new stream from the last revision it delivered + 1: no gap, no duplicate. A compacted start
revision raises :class:`WatchCompacted`. etcd may send one revision's events in fragments (a
batch over its request size limit, asked for so that no answer exceeds gRPC's 4 MiB): only
whole revisions are handed on, so a resumed watch neither repeats nor skips part of one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
from aetcd import rpc

from hvcluster.models.errors import StoreUnavailable
from hvcluster.store.base import EventType, WatchCompacted, WatchEvent
from hvcluster.store.etcd_conn import LOST_WITHIN_S, Connection, send_refused, translate

log = logging.getLogger(__name__)

# etcd asks the leader before answering a watch: a member cut off from it cancels the watch
# (we then move on) instead of going silent.
_REQUIRE_LEADER = (("hasleader", "true"),)


async def watch(
    conn: Connection, prefix: str, span: tuple[bytes, bytes], start_revision: int
) -> AsyncIterator[WatchEvent]:
    """Every change under ``prefix`` (etcd's [key, range_end) ``span``) from
    ``start_revision`` on: :meth:`hvcluster.store.base.Store.watch` on etcd."""
    key, end = span
    next_rev = max(start_revision, 0)  # 0: from now on (learnt when the watch is created)
    failures = 0
    while True:
        conn.check_open()
        ep = conn.current
        stream: Any = None
        try:
            await ep.ready(conn.connect_timeout, fail_fast=conn.several)
            stream = ep.stub("watch").Watch(metadata=_REQUIRE_LEADER)
            create = rpc.WatchCreateRequest(
                key=key, range_end=end, start_revision=next_rev, prev_kv=True, fragment=True
            )
            await stream.write(rpc.WatchRequest(create_request=create))
            held: list[Any] = []  # events of a fragmented answer, not yet handed on
            while True:
                response = await stream.read()
                if response is grpc.aio.EOF:
                    raise StoreUnavailable(f"etcd at {ep.target} ended the watch stream")
                if response.compact_revision:
                    raise WatchCompacted(int(response.compact_revision))
                if response.canceled:
                    raise StoreUnavailable(
                        f"etcd at {ep.target} cancelled the watch: {response.cancel_reason}"
                    )
                if response.created and next_rev == 0:
                    next_rev = response.header.revision + 1
                failures = 0
                held.extend(response.events)
                # Hand on whole revisions only: a fragment may end inside one, and a
                # watch resumed after the last revision handed on must not split it.
                whole = len(held)
                if response.fragment:
                    last = held[-1].kv.mod_revision if held else 0
                    while whole and held[whole - 1].kv.mod_revision == last:
                        whole -= 1
                ready, held = held[:whole], held[whole:]
                for event in ready:
                    yield _event(event)
                if ready:
                    next_rev = ready[-1].kv.mod_revision + 1
        except TimeoutError as e:
            reason = str(e) or f"cannot connect to {ep.target}"
        except grpc.aio.AioRpcError as e:
            lost = send_refused(e) and await ep.lost_connection(LOST_WITHIN_S)
            error = translate(e, ep.target, connection_lost=lost)
            if not isinstance(error, StoreUnavailable):
                raise error from None
            reason = str(error)
        except StoreUnavailable as e:
            reason = str(e)
        except grpc.aio.UsageError:
            conn.check_open()
            raise
        finally:
            if stream is not None:
                stream.cancel()
        failures += 1
        conn.rotate()
        log.warning(
            "watch of %s interrupted (%s); resuming at revision %s",
            prefix or "every key",
            reason,
            next_rev or "now",
        )
        await asyncio.sleep(min(1.0, 0.05 * 2 ** min(failures, 5)))


def _event(event: Any) -> WatchEvent:
    return WatchEvent(
        EventType.DELETE if event.type == rpc.Event.DELETE else EventType.PUT,
        event.kv.key.decode(),
        event.kv.value,
        event.kv.mod_revision,
        event.prev_kv.value if event.HasField("prev_kv") else None,
    )
