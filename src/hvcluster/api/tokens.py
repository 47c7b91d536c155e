"""``/api/v1/tokens``: API tokens (admin only, reads too). Create (the secret is answered
once, never stored), list (without secrets), revoke.

Revoking the last valid admin token is refused: nobody could then manage tokens through the
API (``hvc token create --store-endpoints`` on a host that reaches etcd would still work).
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from pydantic import ConfigDict, Field

from hvcluster.api.context import Ctx, ValidName
from hvcluster.api.reads import skipped_of
from hvcluster.api.removal import Removed
from hvcluster.api.views import Skipped, View
from hvcluster.models.errors import Conflict, NotFound
from hvcluster.models.names import Name
from hvcluster.models.token import Role, Token, issue
from hvcluster.store.base import Compare, Delete
from hvcluster.store.reads import read_snapshot
from hvcluster.store.tokens import add_token

router = APIRouter(prefix="/tokens", tags=["tokens"])

MAX_LIFETIME_S = 10 * 365 * 86400.0


class TokenRequest(View):
    model_config = ConfigDict(extra="forbid")  # a misspelled expires_in_s: never expiring
    name: Name
    role: Role
    expires_in_s: float | None = Field(
        default=None,
        gt=0,
        le=MAX_LIFETIME_S,
        description="seconds from now until the token stops working; default: never",
    )


class TokenView(View):
    name: str
    role: Role
    created_at: float
    expires_at: float | None
    created_by: str
    expired: bool


class TokenCreated(TokenView):
    token: str = Field(description="the bearer token; shown only now, stored only hashed")


class TokenList(View):
    tokens: list[TokenView]
    skipped: list[Skipped] = []
    revision: int


def view(token: Token, now: float) -> TokenView:
    return TokenView(
        name=token.name,
        role=token.role,
        created_at=token.created_at,
        expires_at=token.expires_at,
        created_by=token.created_by,
        expired=token.expired(now),
    )


@router.get("", response_model=TokenList)
async def list_tokens(ctx: Ctx) -> TokenList:
    snap = await read_snapshot(ctx.store, ctx.keys, ("tokens",))
    tokens = await snap.decoded(Token, "tokens", ctx.corrupt)
    now = time.time()
    return TokenList(
        tokens=[view(t, now) for t in tokens.values()],
        skipped=skipped_of(tokens),
        revision=snap.revision,
    )


@router.post("", status_code=201, response_model=TokenCreated)
async def create_token(request: TokenRequest, ctx: Ctx) -> TokenCreated:
    now = time.time()
    expires_at = now + request.expires_in_s if request.expires_in_s is not None else None
    token, secret = issue(request.name, request.role, now, expires_at, created_by=ctx.actor)
    revision = await add_token(ctx.store, ctx.keys, token)
    expiry = f", expires in {request.expires_in_s:.0f} s" if request.expires_in_s else ""
    await ctx.record(
        "token.created",
        f"token/{token.name}",
        f"token {token.name} created with the {token.role.value} role{expiry}",
        {"role": token.role.value, "expires_at": expires_at, "revision": revision},
    )
    return TokenCreated(**view(token, now).model_dump(), token=secret)


@router.delete("/{name}", response_model=Removed)
async def revoke_token(name: ValidName, ctx: Ctx) -> Removed:
    """Revoke a token: its record is deleted, so it is refused from the next request on."""
    snap = await read_snapshot(ctx.store, ctx.keys, ("tokens",))
    tokens = await snap.decoded(Token, "tokens", ctx.corrupt)
    key = ctx.keys.token(name)
    found = next((kv for kv in snap.by_kind["tokens"] if kv.key == key), None)
    if found is None:
        raise NotFound(f"token {name!r} not found")
    now = time.time()
    admins = [
        stored
        for stored in tokens.items.values()
        if (t := stored.value).role is Role.ADMIN and not t.expired(now) and t.name != name
    ]
    target = tokens.get(name)
    if target is not None and target.role is Role.ADMIN and not admins:
        raise Conflict(
            f"token {name!r} is the last valid admin token: create another admin token first"
        )
    # Another admin token must still be there when this one goes, so that admins revoking
    # each other's tokens at once cannot leave none: of revocations that all commit, the last
    # would compare a token already gone. One such token suffices, whatever the number of
    # admins (a compare per admin would outgrow etcd's 128 operations per txn).
    guard = [Compare.mod_is(key, found.mod_revision)]
    if admins:
        witness = min(admins, key=lambda stored: stored.key)
        guard.append(Compare.mod_is(witness.key, witness.mod_revision))
    done = await ctx.store.txn(guard, [Delete(key)])
    if not done.succeeded:
        raise Conflict(f"token {name!r} or an admin token changed while revoking it; try again")
    await ctx.record(
        "token.revoked", f"token/{name}", f"token {name} revoked", {"revision": done.revision}
    )
    return Removed(name=name, revision=done.revision)
