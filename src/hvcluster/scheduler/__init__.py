"""The pure decision layer: a frozen snapshot of the cluster in, decisions out.

No I/O, no asyncio, no logging, no clock: time comes in the snapshot. The controller builds a
:class:`ClusterSnapshot` each cycle, calls :func:`plan`, and applies the decisions as etcd
transactions, logging each decision's ``reason``.
"""

from hvcluster.scheduler.decisions import (
    Decision,
    DeclareDead,
    Failback,
    LeaveFailed,
    Place,
    Quarantine,
    Recover,
    Unplace,
    Unquarantine,
    Wait,
)
from hvcluster.scheduler.plan import plan
from hvcluster.scheduler.snapshot import ClusterSnapshot, NodeView, VMView

__all__ = [
    "ClusterSnapshot",
    "Decision",
    "DeclareDead",
    "Failback",
    "LeaveFailed",
    "NodeView",
    "Place",
    "Quarantine",
    "Recover",
    "Unplace",
    "Unquarantine",
    "VMView",
    "Wait",
    "plan",
]
