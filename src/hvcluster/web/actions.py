"""The dashboard's actions: each one calls the API route function it stands for, acting for
the logged-in token, so the checks, the store writes and the events are the API's own (a
VM that is not running is refused a move with the API's sentence). Before that the request
must prove it came from our pages and the token's role must allow the API route
(:func:`hvcluster.web.session.check_write`): a reader's page shows no buttons, and a
reader's hand-made request is refused all the same.

Each answers a short message (``_flash.html``) that htmx puts in the page's message area;
the page's polling shows the new state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.responses import Response

from hvcluster.api import migrations, nodes, vms
from hvcluster.api.context import ApiContext, valid_name
from hvcluster.api.errors import status_of
from hvcluster.api.views import ActionRequest, ResumeRequest
from hvcluster.models.errors import HvcError
from hvcluster.web.session import CrossSite, Viewer, check_write, viewer
from hvcluster.web.templates import render

router = APIRouter(prefix="/act")
Who = Annotated[Viewer, Depends(viewer)]
REASON = "from the dashboard"


async def form(request: Request) -> dict[str, str]:
    """The url-encoded form htmx posts (the first value of each field)."""
    body = (await request.body()).decode(errors="replace")
    return {k: v[0] for k, v in parse_qs(body, max_num_fields=20).items()}


async def act(
    request: Request,
    who: Viewer,
    api_method: str,
    api_path: str,
    call: Callable[[dict[str, str]], Awaitable[Any]],
    done: str,
) -> Response:
    """Checks and runs one action, and answers its message (the API's status on refusal)."""
    try:
        check_write(request, who, api_method, api_path)
        await call(await form(request))
    except CrossSite as e:
        return render(request, who, "_flash.html", {"ok": False, "text": str(e)}, status=403)
    except HvcError as e:
        return render(
            request, who, "_flash.html", {"ok": False, "text": str(e)}, status=status_of(e)
        )
    except ValidationError as e:
        text = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        return render(request, who, "_flash.html", {"ok": False, "text": text}, status=422)
    return render(request, who, "_flash.html", {"ok": True, "text": done})


def _reason(f: dict[str, str]) -> ActionRequest:
    return ActionRequest(reason=f.get("reason") or REASON)


Reasoned = Callable[[str, ApiContext, ActionRequest], Awaitable[Any]]


def _reasoned(kind: str, verb: str, route: Reasoned, done: str) -> None:
    """Register ``POST /act/<kind>/<name>/<verb>``: the API's ``POST /<kind>/<name>/<verb>``
    (``route``) with the form's reason; ``done`` is what it answers."""

    @router.post(f"/{kind}/{{name}}/{verb}", name=f"{verb}_{kind}")
    async def action(request: Request, who: Who, name: str) -> Response:
        name = valid_name(name)
        path = f"/{kind}/{name}/{verb}"

        async def call(f: dict[str, str]) -> Any:
            return await route(name, who.ctx, _reason(f))

        return await act(request, who, "POST", path, call, f"{name}: {done}")


_reasoned("vms", "start", vms.start_vm, "start requested")
_reasoned("vms", "stop", vms.stop_vm, "stop requested")
_reasoned("nodes", "pause", nodes.pause_node, "paused")
_reasoned("nodes", "drain", migrations.drain_node, "draining")


@router.post("/vms/{name}/move")
async def move(request: Request, who: Who, name: str) -> Response:
    name = valid_name(name)

    async def call(f: dict[str, str]) -> None:
        kind = f.get("kind", "live")
        req = migrations.MoveRequest.model_validate(
            {"to": f.get("to", ""), "kind": kind, "reason": f.get("reason") or REASON}
        )
        await migrations.move_vm(name, who.ctx, req)

    return await act(request, who, "POST", f"/vms/{name}/move", call, f"{name}: move requested")


@router.post("/vms/{name}/delete")
async def delete(request: Request, who: Who, name: str) -> Response:
    name = valid_name(name)
    return await act(
        request,
        who,
        "DELETE",
        f"/vms/{name}",
        lambda f: vms.delete_vm(name, who.ctx, disks=False),
        f"{name}: deleted",
    )


@router.post("/nodes/{name}/resume")
async def resume(request: Request, who: Who, name: str) -> Response:
    name = valid_name(name)

    async def call(f: dict[str, str]) -> None:
        req = ResumeRequest.model_validate(
            {
                "failback": f.get("failback", "policy"),
                "clear_quarantine": f.get("clear_quarantine") == "on",
                "reason": f.get("reason") or REASON,
            }
        )
        await nodes.resume_node(name, who.ctx, req)

    return await act(request, who, "POST", f"/nodes/{name}/resume", call, f"{name}: resumed")
