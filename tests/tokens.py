"""API tokens for tests: made straight in the store, as the bootstrap path does."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable

import httpx

from hvcluster.api import create_app
from hvcluster.models.token import Role, issue
from hvcluster.store.base import Store
from hvcluster.store.keys import Keys
from hvcluster.store.tokens import add_token

ADMIN = "test-admin"  # the token of the ``api`` fixture (tests/api/conftest.py)


async def make_token(
    store: Store,
    keys: Keys,
    name: str = ADMIN,
    role: Role = Role.ADMIN,
    expires_at: float | None = None,
) -> str:
    """Store a token ``name`` with ``role``; the bearer string to send."""
    token, bearer = issue(name, role, time.time(), expires_at)
    await add_token(store, keys, token)
    return bearer


def auth(bearer: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {bearer}"}


@contextlib.asynccontextmanager
async def api_client(
    store: Store,
    keys: Keys,
    node: str = "n1",
    role: Role = Role.ADMIN,
    now: Callable[[], float] = time.time,
) -> AsyncIterator[httpx.AsyncClient]:
    """``node``'s API over ``store``, in-process, spoken to with a new token of ``role``;
    ``now``: the cluster's wall clock (a simulated cluster's)."""
    bearer = await make_token(store, keys, f"test-{role.value}-{secrets.token_hex(4)}", role)
    transport = httpx.ASGITransport(app=create_app(store, keys, node, now=now))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://api/api/v1", headers=auth(bearer)
    ) as client:
        yield client
