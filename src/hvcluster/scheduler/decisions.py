"""What the scheduler decides, one frozen record per decision, each with a ``reason`` sentence.

The controller applies them as etcd transactions (and logs each reason as an event); a
:class:`Wait` changes nothing but says why nothing was done yet, so that every cycle can tell
what it did and why it waited. Applying a decision twice must be harmless: the controller
compares revisions, and the next cycle recomputes everything from etcd.

``subject`` names what a decision is about, as ``vm/<name>`` or ``node/<name>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def named(names: Sequence[str], most: int = 10) -> str:
    """``names`` joined, the first ``most`` of them and how many more: a reason names a
    sample, not every VM of a 125-VM node."""
    shown = ", ".join(names[:most])
    return f"{shown} and {len(names) - most} more" if len(names) > most else shown


def vm_subject(name: str) -> str:
    return f"vm/{name}"


def node_subject(name: str) -> str:
    return f"node/{name}"


@dataclass(frozen=True)
class AboutVM:
    """A decision about one VM (its first field): ``subject`` is ``vm/<name>``."""

    vm: str

    @property
    def subject(self) -> str:
        return vm_subject(self.vm)


@dataclass(frozen=True)
class AboutNode:
    """A decision about one node (its first field): ``subject`` is ``node/<name>``."""

    node: str

    @property
    def subject(self) -> str:
        return node_subject(self.node)


@dataclass(frozen=True)
class Place(AboutVM):
    """Place a VM that has no placement on ``node`` with ``epoch`` (above every epoch seen)."""

    node: str
    epoch: int
    reason: str


@dataclass(frozen=True)
class Recover(AboutVM):
    """Move a VM off ``from_node`` to ``to_node`` with ``epoch``; a failover.

    ``from_dead``: ``from_node`` is dead and safe to reclaim; apply only in a transaction
    that checks the placement is unchanged *and* that its ``alive`` key is still absent.
    ``False``: the VM failed on ``from_node``, which is alive (its local restarts ran out);
    check the placement only. Either way record ``now`` in the VM's failover history.
    """

    from_node: str
    to_node: str
    epoch: int
    reason: str
    from_dead: bool = True


@dataclass(frozen=True)
class LeaveFailed(AboutVM):
    """The VM is not (re)started: mark it failed with ``reason``.

    ``retry=False`` (failover threshold exceeded, no-auto-start after a failure): the
    controller removes its placement, if any, and records ``reason`` as the VM's
    ``failed_reason``; the scheduler leaves it alone until an operator starts it again.
    ``retry=True`` (no node fits now): report it failed, keep whatever placement it has, do
    not record a ``failed_reason``; the scheduler tries again every cycle.
    """

    reason: str
    retry: bool = False


@dataclass(frozen=True)
class Unplace(AboutVM):
    """Delete the VM's placement (its owning agent then stops it), e.g. desired stopped."""

    reason: str


@dataclass(frozen=True)
class Failback(AboutVM):
    """Move a running VM back to a more preferred owner; carried out as a live migration,
    or as a cold move (shut down, start there) when ``live`` is False: the two nodes cannot
    migrate live between them (see :mod:`.compat`)."""

    from_node: str
    to_node: str
    reason: str
    live: bool = True


@dataclass(frozen=True)
class DeclareDead(AboutNode):
    """The node is declared dead this cycle (its VMs may be reclaimed): record the
    snapshot's ``now`` in its failure history (used for quarantine). Emitted once per
    outage: not again while a recorded failure is at or after ``since``."""

    since: float
    reason: str


@dataclass(frozen=True)
class Quarantine(AboutNode):
    """Set the node's admin state to quarantined until ``until``: no placements on it."""

    until: float
    reason: str


@dataclass(frozen=True)
class Unquarantine(AboutNode):
    """The node's quarantine has expired: set its admin state back to up."""

    reason: str


@dataclass(frozen=True)
class Wait:
    """Nothing decided yet for ``subject``; ``until`` is when it may change by time alone
    (``None``: when something else changes, such as a VM stopping)."""

    subject: str
    until: float | None
    reason: str
    # What it waits on when many may wait on the same (a gone node: ``node/n2``; start
    # groups: ``group/db``), and that shared sentence: the controller says many such waits
    # as one event (bounded volume), "<count> VMs <doing> (<names>): <cause>".
    on: str = ""
    cause: str = ""
    doing: str = "stay put for now"


Decision = (
    Place
    | Recover
    | LeaveFailed
    | Unplace
    | Failback
    | DeclareDead
    | Quarantine
    | Unquarantine
    | Wait
)
"""Any one decision; :func:`~.plan.plan` returns a tuple of them."""
