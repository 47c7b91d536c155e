"""etcd's member API (add a learner, promote it, remove a member, list), on the store's own
gRPC connection: ``aetcd`` wraps MemberAdd without its ``isLearner`` field and has no
MemberPromote, so these use etcd's cluster service directly through the stubs ``aetcd``
ships (the same ones every other store call uses).

Membership changes are never retried on another endpoint once sent (``mutable``): a member
add whose answer was lost may have happened, and the caller lists the members again. The one
refusal asked again is "unhealthy cluster" (:func:`add`, :func:`remove`): etcd refuses the
change before proposing it, and it passes by itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aetcd import rpc

from hvcluster.models.errors import NotFound, StoreError
from hvcluster.store.base import Membership
from hvcluster.store.etcd_conn import Connection, Endpoint

# etcd's strict reconfiguration check refuses an add or a removal ("unhealthy cluster") until
# every member has been connected for its health interval (5 s): just after a promotion (a
# host joining right after the one before), a member's start or a leader change. That passes
# by itself: ask again this long.
UNHEALTHY_WAIT_S = 15.0
UNHEALTHY_RETRY_S = 1.0


def membership(m: Any) -> Membership:
    return Membership(
        id=int(m.ID),
        name=str(m.name),
        peer_urls=tuple(m.peerURLs),
        client_urls=tuple(m.clientURLs),
        learner=bool(m.isLearner),
    )


async def members(conn: Connection) -> tuple[Membership, ...]:
    async def call(ep: Endpoint, left: float) -> Any:
        return await ep.stub("cluster").MemberList(rpc.MemberListRequest(), timeout=left)

    response = await conn.call("member list", call, op="member", mutable=False)
    return tuple(membership(m) for m in response.members)


async def add(conn: Connection, peer_urls: Sequence[str], learner: bool) -> Membership:
    request = rpc.MemberAddRequest(peerURLs=list(peer_urls), isLearner=learner)

    async def call(ep: Endpoint, left: float) -> Any:
        return await ep.stub("cluster").MemberAdd(request, timeout=left)

    what = f"member add {','.join(peer_urls)}"
    response = await while_unhealthy(conn, what, call, UNHEALTHY_WAIT_S)
    return membership(response.member)


async def promote(conn: Connection, member_id: int) -> None:
    request = rpc.MemberPromoteRequest(ID=member_id)

    async def call(ep: Endpoint, left: float) -> Any:
        return await ep.stub("cluster").MemberPromote(request, timeout=left)

    await conn.call(f"member promote {member_id:x}", call, op="member", mutable=True)


async def remove(
    conn: Connection, member_id: int, unhealthy_wait: float = UNHEALTHY_WAIT_S
) -> None:
    """Remove a member; :class:`NotFound` if there is none by that id. etcd's "unhealthy
    cluster" refusal is asked again for up to ``unhealthy_wait`` seconds (every caller, an
    eviction or a join's rollback, would otherwise fail on what passes by itself)."""
    if not any(m.id == member_id for m in await members(conn)):
        raise NotFound(f"etcd member {member_id:x} not found")
    request = rpc.MemberRemoveRequest(ID=member_id)

    async def call(ep: Endpoint, left: float) -> Any:
        return await ep.stub("cluster").MemberRemove(request, timeout=left)

    async def gone() -> bool:  # a removal whose answer was lost may have happened
        return not any(m.id == member_id for m in await members(conn))

    await while_unhealthy(conn, f"member remove {member_id:x}", call, unhealthy_wait, gone)


async def while_unhealthy(
    conn: Connection,
    what: str,
    call: Callable[[Endpoint, float], Awaitable[Any]],
    wait: float,
    done: Callable[[], Awaitable[bool]] | None = None,
    every: float = UNHEALTHY_RETRY_S,
) -> Any:
    """A membership change, asked again ``every`` seconds while etcd refuses it as
    "unhealthy cluster", for up to ``wait`` seconds (then that refusal is raised); ``done``,
    if given, says before each new ask whether the change happened after all."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return await conn.call(what, call, op="member", mutable=True)
        except StoreError as e:
            if "unhealthy cluster" not in str(e) or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(every)
        if done is not None and await done():
            return None
