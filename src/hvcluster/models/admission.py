"""Admission control: how many node failures the running HA VMs survive. Pure.

An HA VM is one desired running whose priority is not ``no_auto_start``: the cluster
restarts it elsewhere when its node dies. The cluster *survives k failures* when, should the
k open nodes holding the most HA VMs (by memory, then vCPUs) fail, every HA VM on them fits
on the nodes left, beside what runs there, by the one fitting rule
(:mod:`hvcluster.models.fit`: owners, switches, volumes, CPU model, capacity, hard
anti-affinity), placed largest first on the node it fits tightest. The k most loaded nodes
are the worst case of capacity; first-fit is a heuristic, so the count errs on the safe
side (it may say a failure is not survived that a cleverer packing would survive).

The API applies it when an HA VM is created or started (``admission.node_failures_tolerated``
and ``admission.action``: warn or refuse) and ``hvc cluster capacity`` shows it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from hvcluster.models import fit
from hvcluster.models.node import Node
from hvcluster.models.vm import Priority, VMSpec


def is_ha(spec: VMSpec) -> bool:
    """Restarted elsewhere by the cluster when its node dies."""
    return spec.desired_state == "running" and spec.ha.priority is not Priority.NO_AUTO_START


@dataclass(frozen=True)
class Survival:
    survived: int  # node failures the running HA VMs survive
    nodes: int  # open nodes counted
    ha_vms: int
    why_not_more: str  # what breaks at one failure more ("" when every node but one may fail)
    at_least: bool = False  # counting stopped at the limit asked for: survived or more


def _ha_load(specs: Iterable[VMSpec]) -> tuple[int, int]:
    ha = [s for s in specs if is_ha(s)]
    return sum(s.memory_mib for s in ha), sum(s.vcpus for s in ha)


def survival(
    nodes: Sequence[Node], placed: Mapping[str, Sequence[VMSpec]], limit: int | None = None
) -> Survival:
    """What ``placed`` (node -> the VMs there) survives on the open ``nodes``; counting
    stops after ``limit`` failures when given (then ``at_least``)."""
    names = [n.name for n in nodes]
    ha_count = sum(1 for n in names for s in placed.get(n, ()) if is_ha(s))
    worst = sorted(names, key=lambda n: (*(-x for x in _ha_load(placed.get(n, ()))), n))
    most = len(names) - 1
    for k in range(1, most + 1):
        if limit is not None and k > limit:
            return Survival(k - 1, len(names), ha_count, "", at_least=True)
        failing = worst[:k]
        why = _why_not_survived(failing, [n for n in nodes if n.name not in failing], placed)
        if why is not None:
            return Survival(k - 1, len(names), ha_count, why)
    return Survival(max(most, 0), len(names), ha_count, "")


@dataclass
class _Room:
    """What a node left holds while the failed nodes' VMs are placed: kept as they are added
    (at 8,000 VMs, summing every node's VMs again for each one moved took seconds)."""

    cpus: int
    memory_mib: int
    residents: list[fit.Resident]

    @classmethod
    def of(cls, specs: Sequence[VMSpec]) -> _Room:
        return cls(
            sum(s.vcpus for s in specs),
            sum(s.memory_mib for s in specs),
            [fit.resident(s) for s in specs],
        )

    def add(self, spec: VMSpec) -> None:
        self.cpus += spec.vcpus
        self.memory_mib += spec.memory_mib
        self.residents.append(fit.resident(spec))


def _why_not_survived(
    failing: list[str], left: list[Node], placed: Mapping[str, Sequence[VMSpec]]
) -> str | None:
    used = {n.name: _Room.of(placed.get(n.name, ())) for n in left}
    movers = sorted(
        (s for f in failing for s in placed.get(f, ()) if is_ha(s)),
        key=lambda s: (-s.memory_mib, -s.vcpus, s.name),
    )
    for spec in movers:
        best: tuple[int, str] | None = None
        first_no = ""
        for node in left:
            here = used[node.name]
            why = fit.not_owner(spec, node.name) or fit.misfit(
                spec, node, here.cpus, here.memory_mib, here.residents
            )
            if why is not None:
                first_no = first_no or why
                continue
            free = node.capacity.memory_mib - here.memory_mib - spec.memory_mib
            if best is None or (free, node.name) < best:
                best = (free, node.name)
        if best is None:
            detail = f": {first_no}" if first_no else ": no node is left"
            return (
                f"should {', '.join(failing)} fail, {spec.name} ({spec.vcpus} vCPUs, "
                f"{spec.memory_mib} MiB) fits on no node left{detail}"
            )
        used[best[1]].add(spec)
    return None


def admit(
    spec: VMSpec,
    nodes: Sequence[Node],
    placed: Mapping[str, Sequence[VMSpec]],
    tolerated: int,
) -> str | None:
    """Why running the HA VM ``spec`` too would leave fewer than ``tolerated`` node
    failures survived, or None (also when it is not HA or no node fits it at all: the
    scheduler says that). It is counted on the open node with the most memory free that
    fits it, where the placement of a new VM would most likely put it."""
    if tolerated <= 0 or not is_ha(spec):
        return None
    others = {n: [s for s in specs if s.name != spec.name] for n, specs in placed.items()}
    best: tuple[int, str] | None = None
    for node in nodes:
        here = others.get(node.name, [])
        cpus, memory = sum(s.vcpus for s in here), sum(s.memory_mib for s in here)
        fits = fit.not_owner(spec, node.name) is None and (
            fit.misfit(spec, node, cpus, memory, (fit.resident(s) for s in here)) is None
        )
        if fits:
            free = node.capacity.memory_mib - memory
            if best is None or (-free, node.name) < best:
                best = (-free, node.name)
    if best is None:
        return None
    with_it = {**others, best[1]: [*others.get(best[1], []), spec]}
    after = survival(nodes, with_it, tolerated)
    if after.survived >= tolerated:
        return None
    before = survival(nodes, others, tolerated)  # only for the message
    was = (
        f"; without it they survive {before.survived}{'+' if before.at_least else ''}"
        if before.survived != after.survived
        else "; they do not without it either"
    )
    return (
        f"with {spec.name} the running HA VMs survive {after.survived} node failure(s), "
        f"fewer than the {tolerated} the cluster keeps room for "
        f"(admission.node_failures_tolerated{was}): {after.why_not_more}"
    )
