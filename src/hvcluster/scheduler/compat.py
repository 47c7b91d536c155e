"""Can a running VM move *live* from one node to another? Pure.

A live migration copies a running guest's memory and CPU state into a QEMU on the target
that must present the very same virtual hardware. Between nodes that run different
drivers, different accelerators (kvm, tcg), or give guests different CPU models, it cannot
work: such a move must be a quick migration (state saved and restored) or a cold one. A
target that reports it cannot provide its own guest CPU model takes no live migration
either.
"""

from __future__ import annotations

from hvcluster.models.migration import MigrationKind
from hvcluster.models.node import Node
from hvcluster.scheduler.snapshot import ClusterSnapshot


def live_blocker(source: Node, target: Node) -> str | None:
    """Why a running guest cannot move live from ``source`` to ``target``; None if it can."""
    a, b = source.inventory, target.inventory
    if a.driver != b.driver:
        return (
            f"{source.name} runs the {a.driver} driver and {target.name} the {b.driver} "
            "driver: no live migration between them"
        )
    if a.accelerator != b.accelerator:
        return (
            f"{source.name} runs guests with {a.accelerator} and {target.name} with "
            f"{b.accelerator}: no live migration between them (use quick migration)"
        )
    if a.guest_cpu != b.guest_cpu:
        return (
            f"guests see CPU {a.guest_cpu} on {source.name} and {b.guest_cpu} on "
            f"{target.name}: live migration impossible (use quick migration)"
        )
    if b.guest_cpu_problem:
        return f"{target.name} cannot give guests CPU {b.guest_cpu}: {b.guest_cpu_problem}"
    return None


def live_blockers(
    snapshot: ClusterSnapshot, source: str, kind: MigrationKind = MigrationKind.LIVE
) -> dict[str, str]:
    """Every node a live migration from ``source`` cannot go to, with why (nothing for
    another kind of move, or an unknown source)."""
    src = snapshot.nodes.get(source)
    if kind is not MigrationKind.LIVE or src is None:
        return {}
    found = {}
    for name, node in snapshot.nodes.items():
        if name != source and (why := live_blocker(src.node, node.node)) is not None:
            found[name] = why
    return found
