"""Builders of snapshots for scheduler tests: short to write, real models underneath."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

from hvcluster.models.config import ClusterConfig
from hvcluster.models.lifecycle import NodeAdminState, VMState
from hvcluster.models.node import Capacity, Node
from hvcluster.models.vm import (
    Disk,
    FailbackPolicy,
    HAPolicy,
    Nic,
    Placement,
    Priority,
    VMSpec,
    VMStatus,
)
from hvcluster.scheduler import ClusterSnapshot, Decision, NodeView, VMView

# 2023-11-14 22:13:20 UTC
NOW = 1_700_000_000.0
CONFIG = ClusterConfig()
D = TypeVar("D")


def at(hour: int, minute: int = 0) -> float:
    """A timestamp on 2023-11-15 at ``hour:minute`` UTC."""
    return datetime(2023, 11, 15, hour, minute, tzinfo=UTC).timestamp()


def node(
    name: str,
    cpus: int = 8,
    memory: int = 8192,
    *,
    alive: bool = True,
    gone_since: float | None = None,
    fenced: bool = False,
    admin: NodeAdminState = NodeAdminState.UP,
    failures: Iterable[float] = (),
    quarantined_until: float | None = None,
    switches: tuple[str, ...] = (),
    volumes: tuple[str, ...] = (),
    forgiven_at: float | None = None,
) -> NodeView:
    spec = Node(
        name=name,
        address="127.0.0.1",
        capacity=Capacity(cpus=cpus, memory_mib=memory),
        admin_state=admin,
        switches=switches,
        volumes=volumes,
        failures_forgiven_at=forgiven_at,
    )
    if not alive and gone_since is None:
        gone_since = NOW - 3600  # long gone unless told otherwise
    return NodeView(
        spec,
        alive=alive,
        gone_since=None if alive else gone_since,
        fenced=fenced,
        failures=tuple(failures),
        quarantined_until=quarantined_until,
    )


def vm(
    name: str,
    vcpus: int = 1,
    memory: int = 512,
    *,
    on: str | None = None,
    epoch: int = 1,
    state: VMState | None = VMState.RUNNING,
    status_on: str | None = None,
    status_epoch: int | None = None,
    desired: str = "running",
    priority: Priority = Priority.MEDIUM,
    preferred: tuple[str, ...] = (),
    possible: tuple[str, ...] = (),
    classes: tuple[str, ...] = (),
    enforced: bool = False,
    threshold: int = 3,
    failovers: Iterable[float] = (),
    failed_reason: str = "",
    group: str = "",
    after: tuple[str, ...] = (),
    failback: FailbackPolicy | None = None,
    pending_since: float | None = None,
    last_error: str = "",
    moving_to: str | None = None,
    switches: tuple[str, ...] = (),
    volumes: tuple[str, ...] = (),
    migrating_to: str | None = None,
    migrating: bool = False,
    together: tuple[str, ...] = (),
    together_enforced: bool = False,
) -> VMView:
    """A VM; ``on`` places it (with a status ``state`` there unless ``state`` is None);
    ``status_on`` puts its status on another node; ``migrating_to`` names the target of a
    migration under way (``migrating`` alone: one whose target is not named yet)."""
    ha: dict[str, Any] = {
        "priority": priority,
        "preferred_owners": preferred,
        "possible_owners": possible,
        "anti_affinity_classes": classes,
        "anti_affinity_enforced": enforced,
        "affinity_classes": together,
        "affinity_enforced": together_enforced,
        "failover_threshold": threshold,
        "start_group": group,
        "start_after": after,
    }
    if failback is not None:
        ha["failback"] = failback
    spec = VMSpec(
        name=name,
        vcpus=vcpus,
        memory_mib=memory,
        desired_state=desired,
        ha=HAPolicy(**ha),
        nics=tuple(Nic(switch=sw, mac=f"52:54:00:00:00:{i:02x}") for i, sw in enumerate(switches)),
        disks=tuple(Disk(volume=v, path=f"{name}-{i}.qcow2") for i, v in enumerate(volumes)),
    )
    placement = Placement(node=on, epoch=epoch, moving_to=moving_to) if on else None
    status = None
    where = status_on or on
    if where is not None and state is not None:
        status = VMStatus(
            vm=name,
            node=where,
            epoch=epoch if status_epoch is None else status_epoch,
            state=state,
            last_error=last_error,
        )
    return VMView(
        spec,
        placement=placement,
        status=status,
        failovers=tuple(failovers),
        failed_reason=failed_reason,
        pending_since=pending_since,
        migrating=migrating or migrating_to is not None,
        migrating_to=migrating_to,
    )


def snap(
    nodes: Iterable[NodeView], vms: Iterable[VMView] = (), now: float = NOW, **config: Any
) -> ClusterSnapshot:
    cfg = ClusterConfig.model_validate({**CONFIG.model_dump(), **config})
    return ClusterSnapshot(
        now=now, config=cfg, nodes={n.name: n for n in nodes}, vms={v.name: v for v in vms}
    )


def of(decisions: Iterable[Decision], kind: type[D]) -> list[D]:
    return [d for d in decisions if isinstance(d, kind)]


def for_vm(decisions: Iterable[Decision], name: str) -> list[Decision]:
    return [d for d in decisions if d.subject == f"vm/{name}"]


def one_for(decisions: Iterable[Decision], name: str) -> Decision:
    found = for_vm(decisions, name)
    assert len(found) == 1, f"expected one decision for {name}, got {found}"
    return found[0]
