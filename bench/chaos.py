"""Chaos in a real lab: a 10-minute ``hvc lab chaos`` (every fault kind, fixed seed) against
three etcd members and three nodes in network namespaces, with real QEMU test guests (or sim
VMs), default timings (or ``--profile fast``). Reports recovery p50/p99 per fault kind (from
the fault until every HA VM runs again), false failovers (a failover during a fault that must
not cause one) and violations of the safety invariants, both expected 0; and the live
migrations started beside the faults (done, failed, cancelled, refused).

Writes bench/results/chaos.json (``--profile fast``: chaos-fast.json) and prints a summary,
with the machine's load average before and after (a shared machine makes the numbers noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvcluster.guestimage.image import DEFAULT_CACHE
from hvcluster.lab import chaos, chaos_report, cluster
from hvcluster.lab.chaos_plan import KINDS, parse_kinds
from hvcluster.models.config import PROFILES, ClusterConfig

RESULTS = Path(__file__).parent / "results"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def keep_logs(lab_dir: Path, to: Path) -> None:
    """The agents' and watchdogs' logs, kept after the lab is gone: what a finding needs."""
    to.mkdir(parents=True, exist_ok=True)
    for log in (*lab_dir.glob("nodes/*/agent.log"), *lab_dir.glob("nodes/*/watchdog.log")):
        shutil.copy(log, to / f"{log.parent.name}-{log.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", default=",".join(KINDS))
    parser.add_argument("--driver", default="qemu", choices=("qemu", "sim"))
    parser.add_argument("--vms", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hvc-bench-chaos"))
    parser.add_argument("--profile", default="default", choices=sorted(PROFILES))
    parser.add_argument("--out", type=Path, help="default: results/chaos[-PROFILE].json")
    parser.add_argument(
        "--no-migrations", action="store_true", help="no live moves beside the faults"
    )
    args = parser.parse_args()
    out: Path = args.out or RESULTS / (
        "chaos.json" if args.profile == "default" else f"chaos-{args.profile}.json"
    )
    lab_dir = args.work / "lab"
    load_before = load_average()
    cluster.up(
        3,
        args.driver,
        lab_dir,
        DEFAULT_CACHE,
        ClusterConfig.with_profile(args.profile),
        log=lambda _: None,
        network="netns" if os.geteuid() == 0 else "loopback",
        etcd_members=3,
    )
    try:
        options = chaos.Options(
            duration_s=args.duration,
            seed=args.seed,
            kinds=parse_kinds(args.faults),
            vms=args.vms,
            cache=DEFAULT_CACHE,
            migrations=not args.no_migrations,
        )
        t0 = time.monotonic()
        result: dict[str, Any] = chaos.run(lab_dir, options, log=print)
        elapsed = time.monotonic() - t0
    finally:
        keep_logs(lab_dir, args.work / "logs")
        cluster.down(lab_dir, log=lambda _: None)
    result["driver"] = args.driver
    result["load_average"] = {"before": load_before, "after": load_average()}
    result["cpus"] = os.cpu_count()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(
        f"chaos ({args.driver}, {args.profile} profile, {elapsed:.0f} s, "
        f"load {result['load_average']}):"
    )
    for row in chaos_report.rows(result):
        kind, faults, actions, down, p50, p99 = row
        print(f"  {kind:10} {faults:3} faults ({actions}); HA VMs down {down}: p50 {p50} p99 {p99}")
    moves = result["migrations"]
    print(f"  live migrations: {moves['requested']} requested, {moves['outcomes']}")
    print("  " + chaos_report.verdict(result))
    for v in result["violations"]:
        print(f"  violation {v['rule']} {v['subject']}: {v['detail']}")
    print(f"  written to {out}")


if __name__ == "__main__":
    main()
