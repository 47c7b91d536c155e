"""Who is looking at the dashboard: the API's own tokens, kept in a cookie.

A person logs in by pasting a token ``hvc token create`` made (or the one ``hvc lab up``
prints). The cookie holds that token itself, so every request is judged exactly as the API
judges a bearer token (:func:`hvcluster.api.auth.authenticate`): a revoked or expired token
ends the session at once, and there is no second store of sessions to keep. The cookie is
``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it) and
``Secure`` when the agent serves https.

Writes made with the cookie are also protected against cross-site request forgery: each
must carry the ``HX-Request`` header htmx sends, which a form or a link on another site
cannot add, and a browser sends no cross-origin request with a custom header without a CORS
preflight, which this server never grants. An ``Origin`` header, when present, must be this
server's own. What a role may do is decided by the API's one rule
(:func:`hvcluster.api.auth.required_role`), for the API route the action stands for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastapi import Request
from starlette.responses import Response

from hvcluster.api.auth import SESSION_COOKIE, Caller, authenticate, required_role
from hvcluster.api.context import ApiContext
from hvcluster.models.errors import Forbidden, Unauthenticated
from hvcluster.models.token import Role

COOKIE = SESSION_COOKIE  # the API reads it too: a console websocket opened by our pages
MAX_AGE_S = 12 * 3600  # the browser forgets it after a working day; the token may live on


class NeedsLogin(Exception):
    """No valid token in the cookie: the page sends the browser to the login page."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class CrossSite(Exception):
    """A cookie-authenticated write without the proof it came from our own pages."""


@dataclass(frozen=True)
class Viewer:
    """The logged-in caller, and what the pages may offer them."""

    caller: Caller
    ctx: ApiContext  # the API's context acting for this caller (its events name the token)

    @property
    def can_act(self) -> bool:
        """Operators and admins see action buttons; readers see none."""
        return self.caller.role.allows(Role.OPERATOR)

    @property
    def role(self) -> str:
        return self.caller.role.value


def api_context(request: Request) -> ApiContext:
    ctx = request.app.state.ctx
    assert isinstance(ctx, ApiContext)
    return ctx


async def check_token(ctx: ApiContext, token: str) -> Caller:
    """The caller ``token`` names, as the API would judge it (or :class:`Unauthenticated`)."""
    return await authenticate(ctx.store, ctx.keys, f"Bearer {token.strip()}", time.time())


async def viewer(request: Request) -> Viewer:
    """The dependency of every dashboard page: the cookie's token, checked now."""
    token = request.cookies.get(COOKIE, "")
    if not token:
        raise NeedsLogin("")
    ctx = api_context(request)
    try:
        caller = await check_token(ctx, token)
    except Unauthenticated as e:
        raise NeedsLogin(str(e)) from None
    return Viewer(caller, ctx.acting_for(caller))


def check_write(request: Request, who: Viewer, method: str, api_path: str) -> None:
    """Refuses a write that did not come from our pages (:class:`CrossSite`), or whose API
    route ``method api_path`` needs a role above the viewer's (:class:`Forbidden`, as the
    API would answer)."""
    if request.headers.get("hx-request") != "true":
        raise CrossSite("a dashboard action must come from one of the dashboard's pages")
    origin = request.headers.get("origin")
    if origin is not None and origin != own_origin(request):
        raise CrossSite(f"a dashboard action from another origin ({origin[:80]}) is refused")
    needed = required_role(method, api_path)
    if needed is not None and not who.caller.role.allows(needed):
        raise Forbidden(
            f"{method} {api_path} needs the {needed.value} role or above; "
            f"token {who.caller.name!r} has the {who.role} role"
        )


def own_origin(request: Request) -> str:
    url = request.url
    default = {"http": 80, "https": 443}.get(url.scheme)
    port = "" if url.port in (None, default) else f":{url.port}"
    return f"{url.scheme}://{url.hostname}{port}"


def set_session(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        COOKIE,
        token.strip(),
        max_age=MAX_AGE_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def end_session(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
