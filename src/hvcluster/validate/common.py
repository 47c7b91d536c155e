"""What every category of checks shares: thresholds, which nodes count, wording."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hvcluster.models.node import Node
from hvcluster.models.validation import CheckStatus, ValidationFacts

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
