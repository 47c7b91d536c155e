"""Rendering: one Jinja2 environment (autoescaped: names and reasons come from users), the
filters the templates share, and what every page is given (the viewer, and which browser
libraries are missing)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse

from hvcluster.web import vendor
from hvcluster.web.session import Viewer

TEMPLATES = Path(__file__).parent / "templates"
HTMX = "htmx.org/dist/htmx.min.js"  # under /ui/static/vendor/: the one library every page needs


def since(t: float | None) -> str:
    """``12s ago``, ``3m ago``, ``2h ago``: how old a wall-clock time is."""
    if not t:
        return "-"
    age = max(0.0, time.time() - t)
    if age < 120:
        return f"{age:.0f}s ago"
    if age < 7200:
        return f"{age / 60:.0f}m ago"
    return f"{age / 3600:.0f}h ago"


def clock(t: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "-"


def mib(n: int) -> str:
    return f"{n / 1024:.1f} GiB" if n >= 1024 else f"{n} MiB"


def _env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(since=since, clock=clock, mib=mib)
    return env


ENV = _env()


def missing_libraries(request: Request) -> list[str]:
    """The manifest's files absent from the app's vendor folder (looked at for each page:
    the install may run while the agent does)."""
    try:
        return vendor.missing(dest=request.app.state.vendor_dir)
    except (OSError, ValueError, vendor.VendorError) as e:
        return [f"(the manifest cannot be read: {e})"]


def render(
    request: Request,
    who: Viewer | None,
    name: str,
    values: dict[str, Any],
    page: str = "",
    status: int = 200,
) -> HTMLResponse:
    body = ENV.get_template(name).render(
        request=request,
        who=who,
        page=page,
        missing=missing_libraries(request) if not name.startswith("_") else [],
        **values,
    )
    return HTMLResponse(body, status_code=status)
