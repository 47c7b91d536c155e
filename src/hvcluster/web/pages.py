"""The dashboard's pages and the fragments they poll (htmx ``hx-trigger="every 2s"``).

Each page is rendered whole on the server; the part that changes is a fragment template,
rendered again by its ``/ui/frag/...`` route and swapped in by htmx, so the page follows the
cluster without a reload and without any script of ours. Every read is one of the API's
own read functions, acting for the logged-in token.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from hvcluster.api import events, migrations, nodes, validation, vms
from hvcluster.api.context import valid_name
from hvcluster.api.views import EventView, VMView
from hvcluster.web.overview import overview
from hvcluster.web.session import Viewer, viewer
from hvcluster.web.templates import render

router = APIRouter()
Who = Annotated[Viewer, Depends(viewer)]
# How many of the latest events a poll reads (each is a read of etcd and a decode, on the
# agent's event loop, every second or two per open page): the events page reads what it
# shows, or more when a filter may leave most of them out; a VM's history looks further back.
EVENTS_SHOWN = 100
EVENTS_FILTERED = 500
VM_HISTORY_READ = 300


# --- overview -------------------------------------------------------------------------
async def _overview(who: Viewer) -> dict[str, Any]:
    return {"o": await overview(who.ctx)}


def _overview_pages(path: str, fragment: str, template: str) -> None:
    """Register the page ``path`` (``<template>.html``) and the ``fragment`` its polling
    redraws (``_<template>.html``), both drawn from the overview's data."""

    @router.get(path, name=f"{template}_page")
    async def page(request: Request, who: Who) -> Response:
        return render(request, who, f"{template}.html", await _overview(who), page=template)

    @router.get(fragment, name=f"{template}_frag")
    async def frag(request: Request, who: Who) -> Response:
        return render(request, who, f"_{template}.html", await _overview(who))


_overview_pages("/", "/frag/overview", "overview")


# --- VMs ------------------------------------------------------------------------------
def _matches(vm: VMView, q: str) -> bool:
    """The filter: every word must be found in the VM's name, node or state."""
    text = f"{vm.name} {vm.node} {vm.state.value} {vm.spec.ha.priority.value}".lower()
    return all(word in text for word in q.lower().split())


async def _vms(who: Viewer, q: str) -> dict[str, Any]:
    found = await vms.list_vms(who.ctx)
    shown = sorted((v for v in found.vms if _matches(v, q)), key=lambda v: v.name)
    return {"vms": shown, "q": q, "total": len(found.vms)}


@router.get("/vms")
async def vms_page(request: Request, who: Who, q: str = Query("", max_length=200)) -> Response:
    return render(request, who, "vms.html", await _vms(who, q), page="vms")


@router.get("/frag/vms")
async def vms_frag(request: Request, who: Who, q: str = Query("", max_length=200)) -> Response:
    return render(request, who, "_vms.html", await _vms(who, q))


async def _vm(who: Viewer, name: str) -> dict[str, Any]:
    name = valid_name(name)
    vm = await vms.show_vm(name, who.ctx)
    moves = [m for m in (await migrations.list_migrations(who.ctx)).migrations if m.vm == name]
    moves.sort(key=lambda m: m.created, reverse=True)
    logged = (await events.list_events(who.ctx, limit=VM_HISTORY_READ)).events
    history = [e for e in logged if e.event.subject == f"vm/{name}"][::-1][:30]
    node_list = await nodes.list_nodes(who.ctx)
    # Every node: the page is not redrawn after a move, and the API says why one cannot take it.
    targets = sorted(n.name for n in node_list.nodes)
    return {
        "vm": vm,
        "moves": moves[:10],
        "active": next((m for m in moves if m.active), None),
        "history": history,
        "failovers": list(vm.placement.failovers) if vm.placement else [],
        "targets": targets,
        "spec_json": vm.spec.model_dump_json(indent=2),
    }


@router.get("/vms/{name}")
async def vm_page(request: Request, who: Who, name: str) -> Response:
    return render(request, who, "vm.html", await _vm(who, name), page="vms")


@router.get("/frag/vms/{name}")
async def vm_frag(request: Request, who: Who, name: str) -> Response:
    return render(request, who, "_vm.html", await _vm(who, name))


# --- nodes ----------------------------------------------------------------------------
_overview_pages("/nodes", "/frag/nodes", "nodes")


# --- events ---------------------------------------------------------------------------
def event_matches(e: EventView, node: str, vm: str, kind: str) -> bool:
    """The events page's filters: ``node`` and ``vm`` match the subject (``node/NAME``,
    ``vm/NAME``) or a value of the event's data (a migration's source and target, a
    recovery's node); ``kind`` matches the start of the kind (``vm.`` or ``vm.recovered``)."""
    ev = e.event
    values = {str(v) for v in ev.data.values()}
    if node and ev.subject != f"node/{node}" and node not in values:
        return False
    if vm and ev.subject != f"vm/{vm}" and vm not in values:
        return False
    return not kind or ev.kind.startswith(kind)


async def _events(who: Viewer, node: str, vm: str, kind: str) -> dict[str, Any]:
    read = EVENTS_FILTERED if node or vm or kind else EVENTS_SHOWN
    logged = (await events.list_events(who.ctx, limit=read)).events
    shown = [e for e in reversed(logged) if event_matches(e, node, vm, kind)][:EVENTS_SHOWN]
    return {"events": shown, "node": node, "vm": vm, "kind": kind}


Filter = Annotated[str, Query(max_length=100)]


@router.get("/events")
async def events_page(
    request: Request, who: Who, node: Filter = "", vm: Filter = "", kind: Filter = ""
) -> Response:
    return render(request, who, "events.html", await _events(who, node, vm, kind), page="events")


@router.get("/frag/events")
async def events_frag(
    request: Request, who: Who, node: Filter = "", vm: Filter = "", kind: Filter = ""
) -> Response:
    return render(request, who, "_events.html", await _events(who, node, vm, kind))


# --- validate -------------------------------------------------------------------------
@router.get("/validate")
async def validate_page(request: Request, who: Who) -> Response:
    return render(request, who, "validate.html", {"report": None}, page="validate")


@router.get("/frag/validate")
async def validate_frag(request: Request, who: Who) -> Response:
    """Runs ``cluster validate`` (the API's own: probes between every pair of agents)."""
    report = await validation.validate_cluster(who.ctx)
    order = {"fail": 0, "warn": 1, "pass": 2}  # what needs doing first
    checks = sorted(report.checks, key=lambda c: (order.get(c.status.value, 3), c.category))
    return render(request, who, "_validate.html", {"report": report, "checks": checks})
