"""The guest CPU model follows the VM, as libvirt's domain definition carries it. Pure.

A VM gets a named CPU model (QEMU's ``-cpu``) when it is cold-started: the one its spec names
(``VMSpec.cpu_model``), else the default of the node that starts it (that agent's
``guest_cpu``). The agent records it in the VM's status (``VMStatus.cpu_model``). A live or
quick migration carries the guest's CPU state over, so the target must start QEMU with that
very model (the controller writes it into the migration record, ``Migration.cpu_model``),
and may only be a node that can provide it. A live migration also needs the same driver and
accelerator on both ends; a quick one the same driver. A cold move (failover, start) boots
the guest afresh and takes the new node's model again (or the spec's).

Both the API (to refuse a move up front) and the controller (to refuse it again when it
picks the target: a node can change in between) use these rules; the scheduler re-exports
them (:mod:`hvcluster.scheduler.compat`).
"""

from __future__ import annotations

from hvcluster.models.migration import MigrationKind
from hvcluster.models.node import Inventory, Node
from hvcluster.models.vm import VMSpec, VMStatus

MOST_SHOWN = 6
# The model a qemu node gives guests unless its agent is told otherwise: one named model
# every x86 host provides keeps live migration possible between different hosts.
QEMU_DEFAULT = "qemu64"


def default_guest_cpu(inv: Inventory) -> str:
    """The CPU model a node (of inventory ``inv``) gives a guest whose spec names none: as
    its agent reported it; for an agent that did not, what its driver gave guests then
    (qemu: :data:`QEMU_DEFAULT`; sim: the host's own model)."""
    if inv.guest_cpu_model:
        return inv.guest_cpu_model
    return QEMU_DEFAULT if inv.driver == "qemu" else inv.host_cpu or inv.driver


def guest_cpu_of(spec: VMSpec, default: str, carried: str = "") -> str:
    """The CPU model a VM's guest is started with: ``carried`` (the model it runs with, for
    an incoming migration), else its spec's own, else ``default`` (the node's)."""
    return carried or spec.cpu_model or default


def provided(inv: Inventory) -> tuple[str, ...]:
    """The CPU models a node (of inventory ``inv``) can give guests: as it reports them; an
    agent that reports no list provides its own default model (unless it said it cannot)."""
    if inv.guest_cpu_models:
        return inv.guest_cpu_models
    return () if inv.guest_cpu_problem else (default_guest_cpu(inv),)


def cannot_provide(node: Node, model: str) -> str | None:
    """Why ``node`` cannot give guests CPU ``model``; None if it can."""
    models = provided(node.inventory)
    if model in models:
        return None
    inv = node.inventory
    if model == default_guest_cpu(inv) and inv.guest_cpu_problem:
        return f"model {model} not available on {node.name}: {inv.guest_cpu_problem}"
    shown = ", ".join(models[:MOST_SHOWN]) or "none"
    more = f" and {len(models) - MOST_SHOWN} more" if len(models) > MOST_SHOWN else ""
    return f"model {model} not available on {node.name}: it provides {shown}{more}"


def vm_cpu_model(spec: VMSpec, status: VMStatus | None, node: Node | None) -> str:
    """The CPU model a VM's guest runs with: as its status records it, else as its spec
    names it, else the default of ``node`` (where it runs); "" if none of them says."""
    if status is not None and status.cpu_model:
        return status.cpu_model
    return guest_cpu_of(spec, default_guest_cpu(node.inventory) if node is not None else "")


def move_blocker(
    model: str, source: Node, target: Node, kind: MigrationKind = MigrationKind.LIVE
) -> str | None:
    """Why a VM whose guest runs with CPU ``model`` cannot move from ``source`` to
    ``target`` by a ``kind`` migration (a storage move stays on its node); None if it can."""
    if kind is MigrationKind.STORAGE:
        return None
    a, b = source.inventory, target.inventory
    if a.driver != b.driver:
        return (
            f"{source.name} runs the {a.driver} driver and {target.name} the {b.driver} "
            f"driver: no {kind.value} migration between them, cold move only"
        )
    if kind is MigrationKind.LIVE and a.accelerator != b.accelerator:
        return (
            f"{source.name} runs guests with {a.accelerator} and {target.name} with "
            f"{b.accelerator}: no live migration between them (use quick migration)"
        )
    why = cannot_provide(target, model) if model else None
    if why is not None:
        return (
            f"live and quick migration impossible from {source.name} to {target.name} "
            f"({why}): cold move only"
        )
    return None
