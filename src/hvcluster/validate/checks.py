"""The checks of ``hvc cluster validate``: one function per category, each pure.

Only nodes that are alive (their lease is held) are checked against each other: a dead
node's record is old news, so it is reported once (inventory) and left out elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable

from hvcluster.models.validation import Check, ValidationFacts, ValidationReport
from hvcluster.validate.cluster import etcd, time_skew
from hvcluster.validate.common import Thresholds
from hvcluster.validate.hosts import hypervisor, inventory
from hvcluster.validate.links import network, storage


def validate(
    facts: ValidationFacts, thresholds: Thresholds = Thresholds(), duration_ms: float = 0.0
) -> ValidationReport:
    """Every check, by category, in the order a report shows them."""
    categories: tuple[Callable[[ValidationFacts, Thresholds], list[Check]], ...] = (
        inventory,
        hypervisor,
        network,
        storage,
        time_skew,
        etcd,
    )
    checks = [c for category in categories for c in category(facts, thresholds)]
    return ValidationReport(
        cluster=facts.cluster,
        served_by=facts.served_by,
        time=facts.time,
        duration_ms=duration_ms,
        checks=tuple(checks),
    )
