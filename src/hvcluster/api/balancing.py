"""``/api/v1/cluster/balance`` and ``/api/v1/cluster/capacity``; admission control.

Balance: only the controller plans (the API imports no scheduler), so the API writes a
request at ``requests/balance/<id>`` and waits for the leading controller to write its plan
into it (:mod:`hvcluster.controller.balance`): a dry run answers the plan; an apply begins a
balance run with it too. With no controller elected it is a 409; with none answering
within ``wait_s`` (15 s), a 503.

Capacity: how many node failures the running HA VMs survive
(:mod:`hvcluster.models.admission`), and whether that keeps the setting
``admission.node_failures_tolerated``. Creating or starting an HA VM that would leave fewer
is warned about (an event) or refused (409), per ``admission.action``.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import APIRouter
from pydantic import Field

from hvcluster.api.context import ApiContext, Ctx
from hvcluster.api.views import View
from hvcluster.models.admission import admit, is_ha, survival
from hvcluster.models.base import Model, encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.errors import Conflict, StoreUnavailable
from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.models.node import Node
from hvcluster.models.usage import BalanceAnswer, BalanceRequest
from hvcluster.models.vm import Placement, VMSpec
from hvcluster.store.base import Delete
from hvcluster.store.reads import read_one, read_snapshot
from hvcluster.store.state import config_from, read_config

router = APIRouter(prefix="/cluster", tags=["cluster"])

ANSWER_TIMEOUT_S = 15.0
POLL_S = 0.05


class BalanceAsk(Model):
    apply: bool = False  # False: a dry run, the plan only
    wait_s: float = Field(default=ANSWER_TIMEOUT_S, gt=0, le=60)  # for the controller's answer


@router.post("/balance", response_model=BalanceAnswer)
async def balance(ask: BalanceAsk, ctx: Ctx) -> BalanceAnswer:
    """The controller's balance plan (a table of moves, each with its reason); with
    ``apply`` it also begins moving VMs by it."""
    candidates = await ctx.store.range(ctx.keys.election())
    if not candidates.kvs:
        raise Conflict(
            "no controller is elected to plan a balance (no agent runs with its controller "
            "on): 'hvc cluster status' says which agents are up"
        )
    request = BalanceRequest(
        id=uuid.uuid4().hex[:12], by=ctx.actor, at=time.time(), apply=ask.apply
    )
    key = ctx.keys.request(f"balance/{request.id}")
    await ctx.store.put(key, encode(request))
    try:
        async with asyncio.timeout(ask.wait_s):
            while True:
                found = await read_one(ctx.store, key, BalanceRequest, ctx.corrupt)
                if found is not None and found.value.answer is not None:
                    answer = found.value.answer
                    break
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise StoreUnavailable(
            f"no controller answered the balance request within {ask.wait_s:g} s "
            "(is one elected? 'hvc cluster status' says)"
        ) from None
    finally:
        await ctx.store.txn([], [Delete(key)])
    if answer.started:
        await ctx.record(
            "balance.requested",
            "cluster",
            f"balance requested: {answer.reason}",
            {"moves": len(answer.moves)},
        )
    return answer


class CapacityView(View):
    survived: int  # node failures the running HA VMs survive
    at_least: bool
    nodes: int  # open nodes (alive, up)
    ha_vms: int
    tolerated: int  # admission.node_failures_tolerated
    action: str  # admission.action
    meets: bool
    why_not_more: str


async def cluster_load(
    ctx: ApiContext,
) -> tuple[ClusterConfig, list[Node], dict[str, list[VMSpec]]]:
    """The config, the open nodes (alive and up) and, by node, the VMs placed there. The
    VMs and placements from the agent's cache when the API has one (decoded once, kept
    current by its watch: at 8,000 VMs, reading and decoding them took 0.5 s a request)."""
    if ctx.cache is None:
        snap = await read_snapshot(ctx.store, ctx.keys, ("nodes", "alive", "vms", "placements"))
        config, _ = await read_config(ctx.store, ctx.keys)
        specs = (await snap.decoded(VMSpec, "vms", ctx.corrupt)).by_name()
        placements = await snap.decoded(Placement, "placements", ctx.corrupt)
    else:
        view = await ctx.cache.read()
        snap = await read_snapshot(ctx.store, ctx.keys, ("nodes", "alive"))
        config = config_from(view, ctx.keys)
        specs = view.decoded(ctx.keys.prefix("vms"), VMSpec).by_name()
        placements = view.decoded(ctx.keys.prefix("placements"), Placement)
    nodes = await snap.decoded(Node, "nodes", ctx.corrupt)
    alive = snap.names("alive")
    open_nodes = [
        n.value
        for name, n in sorted(nodes.items.items())
        if name in alive and n.value.admin_state is NodeAdminState.UP
    ]
    placed: dict[str, list[VMSpec]] = {}
    for vm, stored in placements.items.items():
        if vm in specs:
            placed.setdefault(stored.value.node, []).append(specs[vm])
    return config, open_nodes, placed


@router.get("/capacity", response_model=CapacityView)
async def capacity(ctx: Ctx) -> CapacityView:
    """How many node failures the running HA VMs survive, against the setting."""
    config, nodes, placed = await cluster_load(ctx)
    found = survival(nodes, placed)
    tolerated = config.admission.node_failures_tolerated
    return CapacityView(
        survived=found.survived,
        at_least=found.at_least,
        nodes=found.nodes,
        ha_vms=found.ha_vms,
        tolerated=tolerated,
        action=config.admission.action,
        meets=found.survived >= tolerated,
        why_not_more=found.why_not_more,
    )


async def check_admission(ctx: ApiContext, spec: VMSpec) -> list[str]:
    """Refuse (409) or warn about running the HA VM ``spec``, per the setting. A warning is
    an event and is returned, for the answer: the admin sees it as they act, not only in
    the log later."""
    if not is_ha(spec):
        return []  # nothing to check: spare the store a read of the whole cluster
    config, _ = await read_config(ctx.store, ctx.keys)
    if config.admission.node_failures_tolerated <= 0:
        return []  # admission control off (the default): as above
    config, nodes, placed = await cluster_load(ctx)
    tolerated = config.admission.node_failures_tolerated
    why = admit(spec, nodes, placed, tolerated)
    if why is None:
        return []
    if config.admission.action == "refuse":
        raise Conflict(f"admission control refuses {spec.name}: {why}")
    warning = f"admission control: {why}"
    await ctx.record("vm.admission_warning", f"vm/{spec.name}", warning)
    return [warning]
