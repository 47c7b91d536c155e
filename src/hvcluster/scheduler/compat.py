"""Can a running VM move live (or quick) from one node to another? Pure.

A live migration copies a running guest's memory and CPU state into a QEMU on the target
that must present the very same virtual hardware: the same driver and accelerator, and the
CPU model the guest was started with, which the target must be able to provide. A quick
migration restores the saved state, CPU included: the same driver and the same model, and
the target must see a volume the source sees too (the state is saved there). The
rules live in :mod:`hvcluster.models.guestcpu` and :func:`hvcluster.models.fit.cannot_move`
(the API uses them too); here they are applied to a snapshot.
"""

from __future__ import annotations

from hvcluster.models.fit import cannot_move
from hvcluster.models.guestcpu import cannot_provide, move_blocker, provided, vm_cpu_model
from hvcluster.models.migration import MigrationKind
from hvcluster.scheduler.snapshot import ClusterSnapshot, VMView

__all__ = [
    "cannot_provide",
    "move_blocker",
    "move_blockers",
    "provided",
    "vm_cpu_model",
    "vm_model",
]


def vm_model(snapshot: ClusterSnapshot, vm: VMView) -> str:
    """The CPU model ``vm``'s guest runs with (see :func:`vm_cpu_model`)."""
    node = snapshot.nodes.get(vm.placement.node) if vm.placement is not None else None
    return vm_cpu_model(vm.spec, vm.status, node.node if node is not None else None)


def move_blockers(
    snapshot: ClusterSnapshot, vm: VMView, source: str, kind: MigrationKind = MigrationKind.LIVE
) -> dict[str, str]:
    """Every node ``vm`` cannot move to from ``source`` by a ``kind`` migration, with why
    (nothing for an unknown source)."""
    src = snapshot.nodes.get(source)
    if src is None:
        return {}
    model = vm_model(snapshot, vm)
    found = {}
    for name, node in snapshot.nodes.items():
        if name != source and (why := cannot_move(vm.spec, model, src.node, node.node, kind)):
            found[name] = why
    return found
