"""Fuzzing the simulator at volume: ``--runs`` seeded random scenarios (default 10,000, or as
many as fit in ``--budget-s`` seconds, whichever ends first), each a 60-virtual-second run of
the real agents and controller (``hvc sim fuzz``'s), with every invariant checked after every
step. Reports runs per second (wall and CPU), virtual seconds simulated per second, and the
violations (each with its seed: ``hvc sim fuzz --runs 1 --seed SEED`` replays one, shrunk).
``--jobs N`` splits the seeds into N processes (runs are independent; each is deterministic).

Writes bench/results/sim_fuzz.json and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hvcluster.simulate.fuzz import fuzz_one, random_scenario

RESULTS = Path(__file__).parent / "results"


async def run_seeds(seeds: range, budget_s: float) -> dict[str, Any]:
    """One process's share: its seeds in order until the budget is spent."""
    started, cpu0 = time.monotonic(), time.process_time()
    done, virtual, violations = 0, 0.0, []
    for s in seeds:
        if time.monotonic() - started > budget_s:
            break
        result = await fuzz_one(s)
        done += 1
        virtual += float(random_scenario(s)["sim"]["duration_s"])
        violations += [{"seed": s, **v.as_dict()} for v in result.violations]
        if done % 50 == 0:
            rate = done / (time.monotonic() - started)
            print(f"[{seeds.start}..] {done} runs, {rate:.2f} runs/s, "
                  f"{len(violations)} violations", flush=True)  # fmt: skip
    cpu = time.process_time() - cpu0
    return {"runs": done, "cpu_s": cpu, "virtual_s": virtual, "violations": violations}


def share(seeds: range, budget_s: float) -> dict[str, Any]:
    logging.disable(logging.CRITICAL)  # the daemons' own log: noise beside the results
    return asyncio.run(run_seeds(seeds, budget_s))


def run(runs: int, seed: int, budget_s: float, jobs: int) -> dict[str, Any]:
    started = time.monotonic()
    step = -(-runs // jobs)
    shares = [range(s, min(s + step, seed + runs)) for s in range(seed, seed + runs, step)]
    with concurrent.futures.ProcessPoolExecutor(len(shares)) as pool:
        parts = list(pool.map(share, shares, [budget_s] * len(shares)))
    wall = time.monotonic() - started
    done, cpu = sum(p["runs"] for p in parts), sum(p["cpu_s"] for p in parts)
    virtual = sum(p["virtual_s"] for p in parts)
    violations = sorted((v for p in parts for v in p["violations"]), key=lambda v: v["seed"])
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_at_end": os.getloadavg()[0]},
        "asked_runs": runs,
        "first_seed": seed,
        "budget_s": budget_s,
        "jobs": len(shares),
        "runs": done,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "runs_per_s_wall": round(done / wall, 3) if wall else None,
        "runs_per_s_cpu": round(done / cpu, 3) if cpu else None,
        "virtual_s": virtual,
        "virtual_s_per_cpu_s": round(virtual / cpu, 1) if cpu else None,
        "violations": violations,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-s", type=float, default=600.0, help="stop after this long")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes")
    args = parser.parse_args()
    if args.runs < 1 or args.jobs < 1:
        parser.error("--runs and --jobs must be at least 1")
    out = run(args.runs, args.seed, args.budget_s, args.jobs)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sim_fuzz.json").write_text(json.dumps(out, indent=2) + "\n")
    print(
        f"{out['runs']} of {out['asked_runs']} runs in {out['wall_s']} s wall, "
        f"{out['cpu_s']} s CPU: {out['runs_per_s_wall']} runs/s wall, "
        f"{out['runs_per_s_cpu']} runs/s CPU, {out['virtual_s_per_cpu_s']} virtual s per CPU s; "
        f"{len(out['violations'])} violations"
    )
    for v in out["violations"][:20]:
        print(f"  seed {v['seed']}: {v['rule']} {v['subject']} at {v['time']} s: {v['detail']}")
    sys.exit(1 if out["violations"] else 0)


if __name__ == "__main__":
    main()
