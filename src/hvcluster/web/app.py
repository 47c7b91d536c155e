"""The dashboard as a part of an agent's API server: :func:`install_dashboard`.

It is a sub-application mounted at ``/ui`` (``/`` redirects there), in the same process and
on the same port as the API, sharing its context (store, keys, event log) and its request
limits. It is mounted rather than routed because the API's token check is a dependency of
every API route (``Authorization: Bearer``); the dashboard checks the same tokens, from its
cookie (:mod:`hvcluster.web.session`).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.responses import RedirectResponse, Response

from hvcluster.api.context import ApiContext
from hvcluster.api.errors import status_of
from hvcluster.models.errors import HvcError, Unauthenticated
from hvcluster.web import actions, console_page, pages, vendor
from hvcluster.web.session import (
    CrossSite,
    NeedsLogin,
    api_context,
    check_token,
    end_session,
    set_session,
)
from hvcluster.web.templates import render

MOUNT = "/ui"
STATIC = Path(__file__).parent / "static"


def create_dashboard(ctx: ApiContext, vendor_dir: Path = vendor.VENDOR_DIR) -> FastAPI:
    """``vendor_dir``: where the browser libraries are looked for (their install's folder)."""
    web = FastAPI(title="hvcluster dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    web.state.ctx = ctx
    web.state.vendor_dir = vendor_dir
    web.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    web.include_router(pages.router)
    web.include_router(actions.router)
    web.include_router(console_page.router)
    web.add_api_route("/login", login_page, methods=["GET"])
    web.add_api_route("/login", login, methods=["POST"])
    web.add_api_route("/logout", logout, methods=["POST"])
    web.add_exception_handler(NeedsLogin, _needs_login)
    web.add_exception_handler(HvcError, _refused)
    web.add_exception_handler(CrossSite, _refused)
    return web


def install_dashboard(app: FastAPI, vendor_dir: Path = vendor.VENDOR_DIR) -> None:
    """Serves the dashboard from the API ``app`` (made by ``create_app``): at ``/ui``, with
    ``/`` sending a browser there."""
    ctx = app.state.ctx
    assert isinstance(ctx, ApiContext)

    async def home(_: Request) -> Response:
        return RedirectResponse(f"{MOUNT}/", status_code=303)

    app.add_route("/", home, include_in_schema=False)  # a plain route: no token dependency
    app.mount(MOUNT, create_dashboard(ctx, vendor_dir), name="dashboard")


async def login_page(request: Request, why: str = "") -> Response:
    return render(request, None, "login.html", {"why": why}, page="login")


async def login(request: Request) -> Response:
    """Checks the pasted token as the API would, then keeps it in the session cookie."""
    body = (await request.body()).decode(errors="replace")
    token = (parse_qs(body, max_num_fields=5).get("token") or [""])[0].strip()
    try:
        await check_token(api_context(request), token)
    except Unauthenticated as e:
        return render(request, None, "login.html", {"why": str(e)}, page="login", status=401)
    response = RedirectResponse(f"{MOUNT}/", status_code=303)
    set_session(response, request, token)
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse(f"{MOUNT}/login", status_code=303)
    end_session(response)
    return response


async def _needs_login(request: Request, exc: Exception) -> Response:
    why = exc.why if isinstance(exc, NeedsLogin) else ""
    target = f"{MOUNT}/login" + (f"?why={quote(why)}" if why else "")
    if request.headers.get("hx-request") == "true":  # a poll or an action: send the page away
        return Response(status_code=401, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


async def _refused(request: Request, exc: Exception) -> Response:
    status = status_of(exc) if isinstance(exc, HvcError) else 403
    values = {"ok": False, "text": str(exc)}
    if request.headers.get("hx-request") == "true":
        return render(request, None, "_flash.html", values, status=status)
    return render(request, None, "error.html", values, status=status)
