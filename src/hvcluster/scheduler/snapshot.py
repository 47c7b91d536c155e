"""The frozen picture of the cluster that every scheduler function decides from.

The controller builds one :class:`ClusterSnapshot` per cycle from etcd (plus a few facts it
keeps in memory, such as when it first saw a node's ``alive`` key vanish) and passes it to
:func:`hvcluster.scheduler.plan`. Nothing here reads the clock: ``now`` is part of the
snapshot, in seconds of the wall clock (``time.time()``), the same clock as every timestamp
below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from hvcluster.models.config import ClusterConfig
from hvcluster.models.errors import InvalidInput
from hvcluster.models.lifecycle import NodeAdminState, VMState
from hvcluster.models.node import Node
from hvcluster.models.vm import Placement, VMSpec, VMStatus

# States in which a VM may hold a host's resources (and its disks): a VM reported in one of
# these on a node is treated as possibly running there.
ACTIVE_STATES = frozenset(
    {VMState.STARTING, VMState.RUNNING, VMState.PAUSED, VMState.MIGRATING, VMState.STOPPING}
)


@dataclass(frozen=True)
class NodeView:
    """A node as the controller sees it this cycle.

    - ``node``: the stored ``nodes/<node>`` value (capacity, admin state, ...).
    - ``alive``: the node's ``alive/<node>`` key is present (its lease is held).
    - ``gone_since``: when the controller first saw the alive key absent; ``None`` while it is
      present. The controller keeps this in memory; a new leader starts the clock at its own
      start (later, never earlier: that is the safe side). ``None`` for a node that is not
      alive is read as ``now``.
    - ``fenced``: an external fence agent confirmed the node is powered off.
    - ``expired``: the controller watched the node's lease run out (not vanish early, as a
      revoked lease does): the node's watchdog fired before its key went, so its VMs may be
      reclaimed after ``expired_margin_s`` instead of ``fence_after_s`` + margin.
    - ``failures``: times the node was declared dead (see :class:`~.decisions.DeclareDead`),
      for quarantine.
    - ``quarantined_until``: end of the node's current or last quarantine. Keep it after the
      quarantine ends: failures before it are not counted again.
    """

    node: Node
    alive: bool
    gone_since: float | None = None
    fenced: bool = False
    expired: bool = False
    failures: tuple[float, ...] = ()
    quarantined_until: float | None = None

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def admin_state(self) -> NodeAdminState:
        return self.node.admin_state

    @property
    def watchdog_refusal(self) -> str | None:
        """Why the node takes no VM for its watchdog, or None. Its agent starts nothing
        while its watchdog does not acknowledge feeding: were the node cut off, nothing
        would kill a VM it ran while the VM starts elsewhere."""
        report = self.node.watchdog
        if report is None or report.acknowledging:
            return None
        return f"{self.name}'s watchdog does not acknowledge feeding ({report.problem})"


@dataclass(frozen=True)
class VMView:
    """A VM as the controller sees it this cycle.

    - ``spec``: the stored ``vms/<vm>`` value.
    - ``placement``: ``placements/<vm>``, or ``None`` if it is not placed.
    - ``status``: ``status/<vm>`` as its owning agent last reported it, or ``None``.
    - ``failovers``: times the VM was failed over (the controller records one per applied
      :class:`~.decisions.Recover`), for the failover threshold.
    - ``failed_reason``: non-empty when the VM was left failed by a
      :class:`~.decisions.LeaveFailed` with ``retry=False``; the scheduler then leaves it
      alone until an operator starts it again (which clears the reason).
    - ``pending_since``: when the controller first saw this VM wanting a node (desired running
      and not placed on a live node), for the start-order delay. ``None`` is read as ``now``.
    - ``epoch_floor``: the highest epoch the controller knows was ever used for this VM (for
      example kept in a tombstone after the placement was deleted). New epochs are always
      above it, above the placement's and above the status's.
    - ``migrating``: a migration of this VM (live, quick, storage) is under way
      (``migrations/<id>`` not yet done, failed or cancelled); ``migrating_to``: its target
      node, once one is named. Until the flip the VM is placed on (and counted on) its
      source; its target is reserved for it too, so nothing else takes that room meanwhile.
    """

    spec: VMSpec
    placement: Placement | None = None
    status: VMStatus | None = None
    failovers: tuple[float, ...] = ()
    failed_reason: str = ""
    pending_since: float | None = None
    epoch_floor: int = 0
    migrating: bool = False
    migrating_to: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def wants_running(self) -> bool:
        return self.spec.desired_state == "running"

    @property
    def next_epoch(self) -> int:
        """The epoch a new placement of this VM gets: above every epoch seen for it."""
        seen = [self.epoch_floor]
        if self.placement is not None:
            seen.append(self.placement.epoch)
        if self.status is not None:
            seen.append(self.status.epoch)
        return max(seen) + 1

    @property
    def active_on(self) -> str | None:
        """The node whose agent reports this VM in an active state, if any."""
        if self.status is not None and self.status.state in ACTIVE_STATES:
            return self.status.node
        return None

    @property
    def is_running_as_placed(self) -> bool:
        """Running where it is placed, with the placement's epoch."""
        p, s = self.placement, self.status
        return (
            p is not None
            and s is not None
            and s.state is VMState.RUNNING
            and s.node == p.node
            and s.epoch == p.epoch
        )

    @property
    def moving(self) -> bool:
        """A cold move is under way (``placement.moving_to`` is set)."""
        return self.placement is not None and self.placement.moving_to is not None

    def hosts(self) -> frozenset[str]:
        """Every node that may hold this VM's resources: its placement, the target of a cold
        move or of a migration under way (reserved until the move is done), and its active
        status."""
        found = set()
        if self.placement is not None:
            found.add(self.placement.node)
            if self.placement.moving_to is not None:
                found.add(self.placement.moving_to)
        if self.migrating_to is not None:
            found.add(self.migrating_to)
        active = self.active_on
        if active is not None:
            found.add(active)
        return frozenset(found)


def _frozen(mapping: Mapping[str, object]) -> Mapping[str, object]:
    return MappingProxyType(dict(sorted(mapping.items())))


@dataclass(frozen=True)
class ClusterSnapshot:
    """Everything :func:`~.plan.plan` looks at: the time, the settings, the nodes, the VMs.

    ``nodes`` and ``vms`` are keyed by name; the snapshot copies them into read-only mappings
    sorted by name, so the order the controller built them in never changes a decision.
    """

    now: float
    config: ClusterConfig
    nodes: Mapping[str, NodeView] = field(default_factory=dict)
    vms: Mapping[str, VMView] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, node in self.nodes.items():
            if key != node.name:
                raise InvalidInput(f"key {key!r} holds node {node.name!r}", field="nodes")
        for key, vm in self.vms.items():
            if key != vm.name:
                raise InvalidInput(f"key {key!r} holds vm {vm.name!r}", field="vms")
        object.__setattr__(self, "nodes", _frozen(self.nodes))
        object.__setattr__(self, "vms", _frozen(self.vms))
