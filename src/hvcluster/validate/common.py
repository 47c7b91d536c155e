"""What every category of checks shares: thresholds, which nodes count, wording."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hvcluster.models.node import Node
from hvcluster.models.validation import Category, Check, CheckStatus, ValidationFacts

PASS, WARN, FAIL = CheckStatus.PASS, CheckStatus.WARN, CheckStatus.FAIL
ETCD_DEFAULT_QUOTA = 2 * 1024**3  # etcd's default backend quota


@dataclass(frozen=True)
class Thresholds:
    skew_warn_s: float = 0.5
    skew_fail_s: float = 2.0
    volume_free_warn_mib: int = 1024
    etcd_latency_warn_ms: float = 100.0
    etcd_db_warn_bytes: int = int(ETCD_DEFAULT_QUOTA * 0.8)
    etcd_db_fail_bytes: int = int(ETCD_DEFAULT_QUOTA * 0.95)


def alive_nodes(facts: ValidationFacts) -> list[Node]:
    return sorted((n for n in facts.nodes if n.name in facts.alive), key=lambda n: n.name)


def names(nodes: Iterable[str]) -> str:
    return ", ".join(sorted(nodes))


def mib(value: float) -> str:
    return f"{value / 1024:.1f} GiB" if value >= 1024 else f"{value:.0f} MiB"


def size_of(size: int) -> str:
    """Bytes, in the unit that reads best."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def check(
    category: Category,
    name: str,
    status: CheckStatus,
    message: str,
    action: str = "",
    nodes: tuple[str, ...] = (),
) -> Check:
    """A :class:`Check`, its fields in the order every category writes them."""
    return Check(
        category=category, name=name, status=status, message=message, action=action, nodes=nodes
    )


def alike(
    category: Category, name: str, found: dict[str, list[str]], differ: str, action: str, same: str
) -> list[Check]:
    """Is a setting the same on every node? ``found``: each value -> the nodes with it. A
    warning when they differ (``differ`` formatted with ``listed``, each value with its
    nodes), a pass when they agree (``same`` formatted with ``value``); none without any."""
    if len(found) > 1:
        listed = "; ".join(f"{v} on {names(ns)}" for v, ns in sorted(found.items()))
        nodes = tuple(sorted(n for ns in found.values() for n in ns))
        return [check(category, name, WARN, differ.format(listed=listed), action, nodes)]
    return [check(category, name, PASS, same.format(value=v)) for v in found]
