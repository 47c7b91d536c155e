"""The health of an etcd cluster as the store sees it: every member asked for its status in
parallel, each within a budget, members we were not given as endpoints included (etcd's
member list names them), and whether an unreachable member's host *refused* the
connection (nothing listens: its etcd is not running), which Safety rule 5's evidence
counts, while a timeout never does."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
from aetcd import rpc

from hvcluster.models.errors import InvalidInput
from hvcluster.store.base import Member, StoreHealth
from hvcluster.store.etcd_conn import ConnectFailed, Connection, parse_endpoint, translate


@dataclass(frozen=True)
class _Answer:
    """What asking one member for its status gave: its StatusResponse, or the error, and
    whether its host refused the connection (nothing listens: its etcd is not running)."""

    status: Any
    seconds: float = 0.0
    error: str = ""
    refused: bool = False


def _target(url: str) -> str | None:
    """A member's client URL as a target we can dial (None for one we cannot parse)."""
    try:
        return parse_endpoint(url)
    except InvalidInput:
        return None


async def health(conn: Connection, timeout: float | None = None) -> StoreHealth:
    """Ask every member for its status (in parallel, each within ``timeout``)."""
    budget = min(conn.timeout, 2.0) if timeout is None else timeout
    targets = [ep.target for ep in conn.endpoints]
    statuses = dict(
        zip(
            targets,
            await asyncio.gather(*(_status(conn, t, budget) for t in targets)),
            strict=True,
        )
    )
    listed = None
    for target in targets:
        if statuses[target].status is not None:
            listed = await _member_list(conn, target, budget)
            if listed is not None:
                break
    if listed is None:
        members = tuple(
            Member(
                name=t,
                id=0,
                client_urls=(t,),
                reachable=False,
                error=statuses[t].error,
                refused=statuses[t].refused,
            )
            for t in targets
        )
        return StoreHealth(members, None)
    # Ask members we were not given as endpoints too: a check must see every member.
    urls = {m.ID: [t for u in m.clientURLs if (t := _target(u))] for m in listed}
    missing = {u[0] for u in urls.values() if u and not any(t in statuses for t in u)}
    extra = await asyncio.gather(*(_status(conn, t, budget) for t in missing))
    statuses.update(zip(missing, extra, strict=True))
    leader_term = max(
        ((a.status.raftTerm, a.status.leader) for a in statuses.values() if a.status),
        default=(0, 0),
    )
    leader_id = leader_term[1]
    found: list[Member] = []
    for m in listed:
        answers = [statuses[t] for t in urls[m.ID] if t in statuses]
        answer = next(
            (a for a in answers if a.status is not None),
            answers[0] if answers else _Answer(None),
        )
        status, latency, error = answer.status, answer.seconds, answer.error
        if not urls[m.ID]:
            error = "no client URL we can reach: " + (", ".join(m.clientURLs) or "none")
        found.append(
            Member(
                name=m.name or f"{m.ID:x}",
                id=int(m.ID),
                client_urls=tuple(urls[m.ID]),
                is_leader=leader_id != 0 and leader_id == m.ID,
                reachable=status is not None,
                latency_ms=round(latency * 1000, 2) if status is not None else None,
                db_size=int(status.dbSize) if status is not None else None,
                raft_term=int(status.raftTerm) if status is not None else None,
                error=error or ("; ".join(str(e) for e in status.errors) if status else ""),
                leader_id=int(status.leader) if status is not None else None,
                refused=bool(answers) and all(a.refused for a in answers),
            )
        )
    leader = next((m.name for m in found if m.is_leader), None)
    if leader is None and leader_id:
        leader = f"{leader_id:x}"
    return StoreHealth(tuple(found), leader)


async def _status(conn: Connection, target: str, budget: float) -> _Answer:
    """One member's status, or why there is none."""
    ep = conn.endpoint_for(target)
    try:
        started = time.monotonic()
        # A refused connection is known at the first failed attempt (gRPC keeps its
        # error for at most its 1 s reconnect back-off): no need to wait out the budget,
        # and the "is it me or etcd?" evidence has only a second.
        await ep.ready(budget, fail_fast=True)
        left = max(0.001, budget - (time.monotonic() - started))
        started = time.monotonic()
        async with asyncio.timeout(left + 0.2):  # grpc's own deadline should come first
            status = await ep.stub("maintenance").Status(rpc.StatusRequest(), timeout=left)
        return _Answer(status, time.monotonic() - started)
    except ConnectFailed as e:
        return _Answer(None, error=str(e), refused=e.refused)
    except TimeoutError as e:
        return _Answer(None, error=str(e) or f"no answer within {budget:g}s")
    except grpc.aio.AioRpcError as e:
        return _Answer(None, error=str(translate(e, target)))
    except grpc.aio.UsageError as e:  # its channel was dropped meanwhile (a keepalive's)
        return _Answer(None, error=f"etcd at {target}: {e}")


async def _member_list(conn: Connection, target: str, budget: float) -> Any:
    ep = conn.endpoint_for(target)
    try:
        async with asyncio.timeout(budget):
            response = await ep.stub("cluster").MemberList(rpc.MemberListRequest(), timeout=budget)
            return list(response.members)
    except (TimeoutError, grpc.aio.AioRpcError, grpc.aio.UsageError):
        return None
