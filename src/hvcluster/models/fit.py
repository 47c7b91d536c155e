"""Can this VM run on, or move to, this node; and if not, why. Pure.

The one rule for fitting a VM on a node. The scheduler applies it when it places, recovers,
drains and fails back (:mod:`hvcluster.scheduler.placement`), the controller again when it
picks a migration's target, and the API when it refuses a move up front (a node can change
between the two: the controller's check is the one that counts). Each part answers with the
reason a person reads in an event or a 409, or ``None`` when it does not stand in the way:

- :func:`not_up`: the administrator (or quarantine) keeps the node from taking VMs;
- :func:`not_owner`: the VM lists possible owners and the node is not one of them;
- :func:`lacks`: the node does not report a switch of the VM's NICs, a volume of its disks,
  or the CPU model its spec names;
- :func:`no_room`: its vCPUs or memory do not fit beside what the node has in use (no
  overcommit);
- :func:`hard_conflict`: a VM there shares a hard anti-affinity class with it;
- :func:`apart`: a VM it shares a hard (positive) affinity class with runs on another open
  node (:func:`partners` finds them; the scheduler applies it, knowing which nodes are open);
- :func:`cannot_move`: a running guest cannot be carried over (driver, accelerator, the CPU
  model it runs with: :mod:`hvcluster.models.guestcpu`; for a quick migration, a volume both
  nodes see to save its state on).

:func:`misfit` and :func:`why_not_move` chain them in the order a person expects to hear them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hvcluster.models.guestcpu import cannot_provide, move_blocker
from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.models.migration import MigrationKind, no_state_volume, state_volume
from hvcluster.models.node import Node
from hvcluster.models.vm import VMSpec

_NONE: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Resident:
    """A VM that holds (or may hold) resources on a node, as (anti-)affinity sees it:
    ``classes``/``enforced`` its anti-affinity, ``together``/``together_enforced`` its
    positive affinity."""

    vm: str
    classes: frozenset[str]
    enforced: bool
    together: frozenset[str] = frozenset()
    together_enforced: bool = False


def resident(spec: VMSpec) -> Resident:
    ha = spec.ha
    if not ha.anti_affinity_classes and not ha.affinity_classes:  # most VMs: no rule
        return Resident(spec.name, _NONE, ha.anti_affinity_enforced, _NONE, ha.affinity_enforced)
    return Resident(
        spec.name,
        frozenset(ha.anti_affinity_classes),
        ha.anti_affinity_enforced,
        frozenset(ha.affinity_classes),
        ha.affinity_enforced,
    )


@dataclass(frozen=True)
class Partners:
    """Where the VMs ``spec`` shares a positive affinity class with run: ``hard`` maps a
    node to (partner, class) pairs of classes either of the two enforces; ``soft`` counts
    the other partners per node."""

    hard: Mapping[str, tuple[tuple[str, str], ...]]
    soft: Mapping[str, int]


def partners(spec: VMSpec, placed: Iterable[tuple[str, Resident]]) -> Partners:
    """The affinity partners of ``spec`` among ``placed`` (node, resident) pairs (itself
    excluded); the caller passes only the nodes that count (open ones)."""
    mine = frozenset(spec.ha.affinity_classes)
    hard: dict[str, list[tuple[str, str]]] = {}
    soft: dict[str, int] = {}
    if not mine:
        return Partners({}, {})
    for node, other in sorted(placed, key=lambda p: (p[0], p[1].vm)):
        shared = mine & other.together
        if other.vm == spec.name or not shared:
            continue
        if spec.ha.affinity_enforced or other.together_enforced:
            hard.setdefault(node, []).append((other.vm, min(shared)))
        else:
            soft[node] = soft.get(node, 0) + 1
    return Partners({n: tuple(p) for n, p in hard.items()}, soft)


def apart(spec: VMSpec, node: str, found: Partners) -> str | None:
    """Why ``spec`` may not run on ``node`` by hard positive affinity: a partner runs on
    another node (the first such, by node name)."""
    for other_node, pairs in sorted(found.hard.items()):
        if other_node != node:
            vm, cls = pairs[0]
            return (
                f"{spec.name} must run beside {vm} (hard affinity class {cls!r}), "
                f"which runs on {other_node}"
            )
    return None


@dataclass(frozen=True)
class Conflicts:
    hard: tuple[tuple[str, str], ...]  # (other vm, shared class)
    soft: int


def conflicts(spec: VMSpec, residents: Iterable[Resident]) -> Conflicts:
    """Anti-affinity conflicts of ``spec`` with the VMs of one node (itself excluded): hard
    when either of the two enforces the class they share, soft otherwise."""
    if not spec.ha.anti_affinity_classes:  # nothing to share (the common case, at scale)
        return Conflicts((), 0)
    me = resident(spec)
    hard: list[tuple[str, str]] = []
    soft = 0
    for other in sorted(residents, key=lambda r: r.vm):
        if other.vm == me.vm:
            continue
        shared = me.classes & other.classes
        if not shared:
            continue
        if me.enforced or other.enforced:
            hard.append((other.vm, min(shared)))
        else:
            soft += 1
    return Conflicts(tuple(hard), soft)


def not_up(node: Node) -> str | None:
    """Why ``node`` takes no VMs by its admin state (paused, draining, quarantined)."""
    if node.admin_state is NodeAdminState.UP:
        return None
    why = f": {node.admin_reason}" if node.admin_reason else ""
    return f"{node.name} is {node.admin_state.value}{why}"


def not_owner(spec: VMSpec, node: str) -> str | None:
    """Why ``node`` may not run ``spec`` by its possible owners (any node when it lists none)."""
    owners = spec.ha.possible_owners
    if owners and node not in owners:
        return f"{node} is not a possible owner of {spec.name}"
    return None


def lacks(spec: VMSpec, node: Node) -> str | None:
    """Why ``node`` cannot run ``spec`` for want of its switches (the NICs' switches) or its
    volumes (the disks' volumes), as the node's agent reports them (with the reason the node
    gave), or of the CPU model the spec names."""
    parts = []
    switches = sorted({nic.switch for nic in spec.nics} - set(node.switches))
    if switches:
        parts.append(_missing("switch", switches, node.switch_problems))
    volumes = sorted({d.volume for d in spec.disks if d.volume is not None} - set(node.volumes))
    if volumes:
        parts.append(_missing("volume", volumes, node.volume_problems))
    if parts:
        return f"{node.name} lacks {' and '.join(parts)}"
    if spec.cpu_model and (why := cannot_provide(node, spec.cpu_model)) is not None:
        return f"{spec.name} names CPU {why}"  # the spec's model, for any start there
    return None


def _missing(what: str, names: list[str], problems: Mapping[str, str]) -> str:
    return ", ".join(
        f"{what} {n!r}" + (f" ({problems[n]})" if n in problems else "") for n in names
    )


def no_room(spec: VMSpec, node: Node, used_cpus: int, used_memory_mib: int) -> str | None:
    """Why ``spec`` does not fit in what ``node`` has free, given what is in use there
    (``spec`` itself not included)."""
    cap = node.capacity
    free_cpus = cap.cpus - used_cpus
    free_memory = cap.memory_mib - used_memory_mib
    if spec.vcpus > free_cpus:
        return f"{node.name} has {max(free_cpus, 0)} of {cap.cpus} vCPUs free"
    if spec.memory_mib > free_memory:
        return f"{node.name} has {max(free_memory, 0)} of {cap.memory_mib} MiB free"
    return None


def hard_conflict(spec: VMSpec, node: str, residents: Iterable[Resident]) -> str | None:
    """Why ``spec`` may not join the VMs of ``node`` by hard anti-affinity."""
    hard = conflicts(spec, residents).hard
    if not hard:
        return None
    other, cls = hard[0]
    return f"{node} runs {other} of hard anti-affinity class {cls!r}"


def misfit(
    spec: VMSpec,
    node: Node,
    used_cpus: int,
    used_memory_mib: int,
    residents: Iterable[Resident],
) -> str | None:
    """Why ``spec`` cannot run on ``node`` (switches, volumes and CPU model; capacity, with
    ``used_*`` in use there besides it; hard anti-affinity with ``residents``), or None."""
    return (
        lacks(spec, node)
        or no_room(spec, node, used_cpus, used_memory_mib)
        or hard_conflict(spec, node.name, residents)
    )


def cannot_move(
    spec: VMSpec, model: str, source: Node, target: Node, kind: MigrationKind
) -> str | None:
    """Why the running guest of ``spec`` (with CPU ``model``) cannot be carried from
    ``source`` to ``target`` by a ``kind`` migration; a cold move boots it afresh instead."""
    blocker = move_blocker(model, source, target, kind)
    if blocker is not None:
        return blocker
    if kind is MigrationKind.QUICK and state_volume(spec, source, target) is None:
        return no_state_volume(source, target)  # the target could not read the state
    return None


@dataclass(frozen=True)
class Target:
    """A node a running VM might move to, with what the reader of the cluster knows of it."""

    name: str
    node: Node | None  # None: no such node
    alive: bool
    used_cpus: int = 0  # by the VMs there or on their way there, the moving one not included
    used_memory_mib: int = 0
    residents: tuple[Resident, ...] = ()


def why_not_move(
    spec: VMSpec,
    model: str,
    source: Node | None,
    target: Target,
    kind: MigrationKind = MigrationKind.LIVE,
) -> str | None:
    """Why the running VM ``spec`` (its guest on CPU ``model``) cannot move from ``source``
    to ``target`` by a ``kind`` migration now, or None. An unknown source skips the checks
    of carrying the guest over (the controller makes them once it knows)."""
    node = target.node
    if node is None:
        return f"node {target.name!r} not found"
    if source is not None and node.name == source.name:
        return f"{spec.name} already runs on {node.name}"
    if not target.alive:
        return f"{node.name} is not alive"
    why = not_up(node) or not_owner(spec, node.name)
    if why is None and source is not None:
        why = cannot_move(spec, model, source, node, kind)
    return why or misfit(spec, node, target.used_cpus, target.used_memory_mib, target.residents)
