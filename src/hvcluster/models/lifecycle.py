"""Lifecycles of VMs, nodes and migrations: the states, and the allowed moves between them,
written down in one place. Anything not listed here is refused with :class:`IllegalTransition`.

Staying in the same state is always allowed: stored jobs are idempotent, and re-reporting a
state must do no harm.

Who enforces them: the API checks a node's admin state change (``NODE_LIFECYCLE.check``), the
migration record's writers check its moves (:mod:`hvcluster.store.migrations`), and every
writer of a VM's status (the agent's reports and starts, the controller's left-failed mark)
checks :func:`vm_status_change` against the status it replaces, refusing (and logging) an
illegal one rather than storing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Generic, TypeVar

from hvcluster.models.errors import IllegalTransition

if TYPE_CHECKING:  # (models/vm.py imports this module)
    from hvcluster.models.vm import VMStatus


class VMState(StrEnum):
    """The actual state of a VM, as its owning agent reports it."""

    PENDING = "pending"  # spec exists, not placed yet (or waiting for a node that fits)
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    MIGRATING = "migrating"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"  # left failed, with a reason: crashed too often, no node fits, ...


class NodeAdminState(StrEnum):
    """What the administrator (or the controller, for quarantine) says a node may do."""

    UP = "up"
    PAUSED = "paused"  # no new placements
    DRAINING = "draining"  # moving its VMs away, ends paused
    QUARANTINED = "quarantined"  # failed too often: no placements until it expires


class MigrationState(StrEnum):
    REQUESTED = "requested"
    PREPARING = "preparing"  # target starts QEMU paused with -incoming
    TRANSFERRING = "transferring"  # source runs QMP migrate
    SWITCHING = "switching"  # transfer complete, the source could not flip: the controller does
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


S = TypeVar("S", bound=StrEnum)


class Lifecycle(Generic[S]):
    """A state machine's table of allowed moves."""

    def __init__(self, kind: str, moves: Mapping[S, frozenset[S]]) -> None:
        self.kind = kind
        self.moves = dict(moves)

    def allowed(self, current: S, target: S) -> bool:
        return current == target or target in self.moves.get(current, frozenset())

    def check(self, current: S, target: S) -> S:
        """Return ``target`` if the move is allowed, else raise :class:`IllegalTransition`."""
        if not self.allowed(current, target):
            raise IllegalTransition(self.kind, current.value, target.value)
        return target

    def is_final(self, state: S) -> bool:
        return not self.moves.get(state)


_V = VMState
VM_LIFECYCLE: Lifecycle[VMState] = Lifecycle(
    "vm",
    {
        _V.PENDING: frozenset({_V.STARTING, _V.STOPPED, _V.FAILED}),
        _V.STARTING: frozenset({_V.RUNNING, _V.PAUSED, _V.STOPPED, _V.FAILED}),
        # -> STARTING: the agent starts again a guest that died or shut down unasked (at the
        # same placement epoch).
        _V.RUNNING: frozenset(
            {_V.STARTING, _V.PAUSED, _V.MIGRATING, _V.STOPPING, _V.STOPPED, _V.FAILED}
        ),
        _V.PAUSED: frozenset(
            {_V.STARTING, _V.RUNNING, _V.MIGRATING, _V.STOPPING, _V.STOPPED, _V.FAILED}
        ),
        _V.MIGRATING: frozenset({_V.STARTING, _V.RUNNING, _V.PAUSED, _V.STOPPED, _V.FAILED}),
        _V.STOPPING: frozenset({_V.STARTING, _V.STOPPED, _V.FAILED}),  # the guest shut down
        _V.STOPPED: frozenset({_V.PENDING, _V.STARTING}),
        _V.FAILED: frozenset({_V.PENDING, _V.STARTING, _V.STOPPED}),
    },
)


def vm_status_change(before: VMStatus | None, after: VMStatus) -> str | None:
    """Why writing status ``after`` over ``before`` (as stored; None if absent or unreadable)
    is an illegal move of :data:`VM_LIFECYCLE`, or None if it is allowed.

    A status reports one *run* of a VM: one node at one placement epoch, for one VM (uid).
    The table holds within a run. A new run (another node or epoch: a failover, a migration,
    a new placement; the controller's left-failed mark, on no node; a new VM of the same
    name) starts afresh, in whatever state its writer found it."""
    if before is None or (before.node, before.epoch, before.uid) != (
        after.node,
        after.epoch,
        after.uid,
    ):
        return None
    if VM_LIFECYCLE.allowed(before.state, after.state):
        return None
    where = f"on {after.node}" if after.node else "on no node"
    return (
        f"vm status {before.state.value} -> {after.state.value} {where} at epoch "
        f"{after.epoch} is not a move of the VM lifecycle"
    )


_N = NodeAdminState
NODE_LIFECYCLE: Lifecycle[NodeAdminState] = Lifecycle(
    "node",
    {
        _N.UP: frozenset({_N.PAUSED, _N.DRAINING, _N.QUARANTINED}),
        _N.PAUSED: frozenset({_N.UP, _N.DRAINING, _N.QUARANTINED}),
        _N.DRAINING: frozenset({_N.PAUSED, _N.UP}),
        _N.QUARANTINED: frozenset({_N.UP, _N.PAUSED}),
    },
)

_M = MigrationState
MIGRATION_LIFECYCLE: Lifecycle[MigrationState] = Lifecycle(
    "migration",
    {
        _M.REQUESTED: frozenset({_M.PREPARING, _M.FAILED, _M.CANCELLED}),
        _M.PREPARING: frozenset({_M.TRANSFERRING, _M.FAILED, _M.CANCELLED}),
        # DONE: the source flipped the placement itself the moment its transfer completed;
        # SWITCHING: it could not (a compare failed), the controller decides.
        _M.TRANSFERRING: frozenset({_M.DONE, _M.SWITCHING, _M.FAILED, _M.CANCELLED}),
        # Past SWITCHING the placement flip decides: done, or failed if the flip lost.
        _M.SWITCHING: frozenset({_M.DONE, _M.FAILED}),
        _M.DONE: frozenset(),
        _M.FAILED: frozenset(),
        _M.CANCELLED: frozenset(),
    },
)
