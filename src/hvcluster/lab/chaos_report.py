"""What a chaos run says at the end: faults by kind, recoveries with p50/p99, false failovers
and violations (expected: none), as JSON and as rows for a table.

A false failover is a ``vm.recovered`` event while a fault that must not move VMs was the
last one injected (``Fault.moves`` is False): a stall or cut shorter than ``fence_after``,
one etcd member down, a node cut from the other nodes only, a VM process killed. Such a fault
that made a node lose its lease (``node.lease_lost``), or took an HA VM down (as the checker
saw it; a VM process killed takes its own VM down by design), is counted too: it did not
move a VM but it was not ridden out.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hvcluster.lab.chaos_moves import Move, summary
from hvcluster.lab.chaos_plan import Fault

if TYPE_CHECKING:
    from hvcluster.lab.chaos import Options, Setup
    from hvcluster.lab.invariants import Checker

FAILOVER = "vm.recovered"
LEASE_LOST = "node.lease_lost"


@dataclass
class FaultRecord:
    fault: Fault
    at: float  # wall clock of the injection
    undone: float = 0.0
    settled: float = 0.0
    affected: bool = False  # some HA VM stopped running because of it
    recovery_s: float = 0.0  # from the fault until every HA VM ran again
    skipped: str = ""  # why it could not be injected
    aborted: bool = False  # the lab did not come back: the run stopped there

    def as_dict(self) -> dict[str, Any]:
        f = self.fault
        return {
            "kind": f.kind,
            "action": f.action,
            "target": f.target,
            "source": f.source if f.action == "partition" else None,
            "hold_s": round(f.hold_s, 3),
            "may_move": f.moves,
            "at": self.at,
            "affected": self.affected,
            "recovery_s": round(self.recovery_s, 3),
            "skipped": self.skipped or None,
            "aborted": self.aborted,
        }


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 3),
        "p99": round(p99, 3),
        "max": round(ordered[-1], 3),
    }


def _window(records: list[FaultRecord], t: float) -> FaultRecord | None:
    """The fault injected last before ``t``."""
    before = [r for r in records if r.at <= t and not r.skipped]
    return before[-1] if before else None


def report(
    options: Options,
    setup: Setup,
    records: list[FaultRecord],
    checker: Checker,
    started: float,
    events: list[dict[str, Any]],
    kinds: tuple[str, ...],
    moves: list[Move] | None = None,
) -> dict[str, Any]:
    done = [r for r in records if not r.skipped]
    by_kind: dict[str, Any] = {}
    for kind in kinds:
        mine = [r for r in done if r.fault.kind == kind]
        hit = [r.recovery_s for r in mine if r.affected]
        by_kind[kind] = {
            "faults": len(mine),
            "actions": dict(Counter(r.fault.action for r in mine)),
            "affected": len(hit),
            "recovery_s": percentiles(hit),
        }
    false_failovers: list[dict[str, str]] = []
    lost_leases: list[dict[str, str]] = []
    for e in events:
        if e["kind"] not in (FAILOVER, LEASE_LOST):
            continue
        r = _window(records, e["time"])
        if r is not None and not r.fault.moves:
            said = {
                "event": e["kind"],
                "subject": e["subject"],
                "fault": r.fault.describe(),
                "reason": str(e.get("reason", ""))[:300],
            }
            (false_failovers if e["kind"] == FAILOVER else lost_leases).append(said)
    return {
        "seed": options.seed,
        "duration_s": round(time.time() - started, 1),
        "planned_duration_s": options.duration_s,
        "fault_kinds": list(kinds),
        "slo_s": options.slo_s,
        "settings": setup.settings,
        "watched": {
            "ha_vms": list(setup.watched.ha),
            "stopped_vms": setup.watched.stopped,
            "paused_nodes": setup.watched.paused,
        },
        "faults": len(done),
        "skipped": len(records) - len(done),
        "aborted": any(r.aborted for r in records),
        "by_kind": by_kind,
        "recovery_s": percentiles([r.recovery_s for r in done if r.affected]),
        "failovers": sum(1 for e in events if e["kind"] == FAILOVER),
        "false_failovers": false_failovers,
        "lost_leases_in_no_move_faults": lost_leases,
        "no_move_faults_with_ha_vms_down": [
            r.fault.describe()
            for r in done
            if not r.fault.moves and r.affected and r.fault.kind != "vm"
        ],
        "migrations": summary(moves or []),
        "violations": [v.as_dict() for v in checker.violations],
        "checker": {
            "samples": dict(checker.samples),
            "counter_read_errors": checker.counter_errors,
            "counters": dict(checker.max_counter),
        },
        "log": [r.as_dict() for r in records],
    }


def rows(result: dict[str, Any]) -> list[list[Any]]:
    """One row per fault kind: faults, actions, how many took an HA VM down, p50/p99."""
    out = []
    for kind, k in result["by_kind"].items():
        rec = k["recovery_s"]
        actions = ", ".join(f"{a} {n}" for a, n in sorted(k["actions"].items()))
        out.append(
            [
                kind,
                k["faults"],
                actions,
                k["affected"],
                f"{rec['p50']:.2f}" if rec["n"] else "-",
                f"{rec['p99']:.2f}" if rec["n"] else "-",
            ]
        )
    return out


HEADERS = ["kind", "faults", "actions", "HA VMs down", "recovery p50 s", "recovery p99 s"]


def verdict(result: dict[str, Any]) -> str:
    v, ff = len(result["violations"]), len(result["false_failovers"])
    rec = result["recovery_s"]
    said = f"p50 {rec['p50']:.2f} s, p99 {rec['p99']:.2f} s" if rec["n"] else "none needed"
    outcomes = result.get("migrations", {}).get("outcomes", {})
    moved = ", ".join(f"{k} {n}" for k, n in sorted(outcomes.items())) or "none"
    return (
        f"{result['faults']} faults in {result['duration_s']:.0f} s (seed {result['seed']}): "
        f"recoveries {said}; live migrations {moved}; false failovers {ff}; "
        f"no-move faults that lost a lease {len(result['lost_leases_in_no_move_faults'])} "
        f"or took an HA VM down {len(result['no_move_faults_with_ha_vms_down'])}; "
        f"violations {v} (expected 0)"
    )
