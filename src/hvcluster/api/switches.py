"""``/api/v1/switches``: virtual switches (a Linux bridge of the same name on every node).
Add, list, show, remove.

The API records the switch; each agent creates its bridge (see
:func:`hvcluster.models.storage.bridge_name`) and reports it in its node record. A switch
still used by a VM's NIC cannot be removed. An uplink that a node reports carrying an
address or the default route is refused (422): bridging it would take that node off the
network (its agent refuses it too, for nodes that report it later).
"""

from __future__ import annotations

from fastapi import APIRouter

from hvcluster.api.context import ApiContext, Ctx
from hvcluster.api.node_reported import (
    ReportedList,
    ReportedView,
    add_reported_routes,
)
from hvcluster.models.base import encode
from hvcluster.models.errors import Conflict, InvalidInput
from hvcluster.models.node import Node
from hvcluster.models.storage import Switch
from hvcluster.models.vm import VMSpec
from hvcluster.store.base import Compare, Put
from hvcluster.store.reads import read_snapshot

router = APIRouter(prefix="/switches", tags=["network"])


class SwitchView(ReportedView):
    name: str
    type: str
    uplink: str | None
    bridge: str  # the Linux bridge on every node
    switch: Switch
    ready_on: list[str]  # nodes that report the bridge ready


class SwitchList(ReportedList):
    switches: list[SwitchView]


def uses(spec: VMSpec, switch: str) -> bool:
    return any(nic.switch == switch for nic in spec.nics)


def view(switch: Switch, nodes: list[Node], used_by: list[str]) -> SwitchView:
    name = switch.name
    return SwitchView(
        name=name,
        type=switch.type.value,
        uplink=switch.uplink,
        bridge=switch.bridge,
        switch=switch,
        ready_on=sorted(n.name for n in nodes if name in n.switches),
        problems={n.name: n.switch_problems[name] for n in nodes if name in n.switch_problems},
        used_by=used_by,
    )


async def refuse_busy_uplink(ctx: ApiContext, switch: Switch) -> None:
    """Refuse an uplink that any node reports carrying an address or the default route."""
    uplink = switch.uplink
    if uplink is None:
        return
    snap = await read_snapshot(ctx.store, ctx.keys, ("nodes",))
    nodes = await snap.decoded(Node, "nodes", ctx.corrupt)
    carrying = {
        name: node.interfaces_in_use[uplink]
        for name, node in sorted(nodes.by_name().items())
        if uplink in node.interfaces_in_use
    }
    if carrying:
        where = "; ".join(f"on {name}: {what}" for name, what in carrying.items())
        raise InvalidInput(
            f"uplink {uplink} carries {where}: enslaving it to a bridge would cut "
            f"{', '.join(carrying)} off the network; use an interface without addresses or "
            "routes",
            field="uplink",
        )


@router.post("", status_code=201, response_model=SwitchView)
async def add_switch(switch: Switch, ctx: Ctx) -> SwitchView:
    await refuse_busy_uplink(ctx, switch)
    key = ctx.keys.switch(switch.name)
    result = await ctx.store.txn([Compare.absent(key)], [Put(key, encode(switch))])
    if not result.succeeded:
        raise Conflict(f"switch {switch.name!r} already exists")
    uplink = f", uplink {switch.uplink}" if switch.uplink else ""
    await ctx.record(
        "switch.added",
        f"switch/{switch.name}",
        f"switch {switch.name} added ({switch.type.value}{uplink}, bridge {switch.bridge})",
        {"type": switch.type.value, "uplink": switch.uplink, "revision": result.revision},
    )
    return view(switch, [], [])


add_reported_routes(
    router, "switch", "switches", Switch, view, (SwitchView, SwitchList), uses,
    "Forget a switch (agents leave existing bridges alone). Refused while a VM uses it.",
)  # fmt: skip
