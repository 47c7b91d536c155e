"""The dashboard's console page of a VM: its serial console in xterm.js and its graphical
console in noVNC, both over the API's console websockets (``api/consoles.py``), which any
agent serves wherever the VM runs. The browser sends the session cookie with them (same
origin); the API judges it as it judges the token. The page's own script
(``static/console.js``) reconnects a graphical console that was closed because the VM moved
(the serial one is carried over by the agent)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from hvcluster.api import vms
from hvcluster.api.auth import WEBSOCKET, required_role
from hvcluster.api.context import valid_name
from hvcluster.models.errors import Forbidden
from hvcluster.web.session import Viewer, viewer
from hvcluster.web.templates import render

router = APIRouter()
Who = Annotated[Viewer, Depends(viewer)]


def may_open_console(who: Viewer, name: str) -> bool:
    """The API's own rule for the console websocket (operator or above)."""
    needed = required_role(WEBSOCKET, f"/vms/{name}/console/serial")
    return needed is None or who.caller.role.allows(needed)


@router.get("/vms/{name}/console")
async def console_page(request: Request, who: Who, name: str) -> Response:
    name = valid_name(name)
    if not may_open_console(who, name):
        raise Forbidden(
            f"a console needs the operator role or above; token {who.caller.name!r} has the "
            f"{who.role} role"
        )
    vm = await vms.show_vm(name, who.ctx)
    return render(request, who, "console.html", {"vm": vm}, page="vms")
