"""How few migrations the balancer plans: its plan against the exact optimum (OR-Tools CP-SAT).

100 seeded clusters (4 to 10 nodes of mixed sizes, 20 to 100 VMs placed unevenly, measured CPU
use, possible owners, hard anti-affinity classes and hard affinity groups, a random level).
For each, :func:`hvcluster.scheduler.balance.plan_balance` plans; CP-SAT then finds the fewest
moves that bring every node within the same limits under the same rules: VMs move only off
nodes above the level (as the planner's), a moved VM counts on both its nodes for capacity
and hard anti-affinity (as a migration under way does), hard affinity groups move whole, the
limits are each node's level-or-average of CPU and memory. Goal: the planner's moves at most
5 % above the optimum's, summed over the clusters both bring within the level.

OR-Tools is a benchmark-only dependency (``pip install -e '.[bench]'``, or ``pip install
ortools`` beside the project); run ``python bench/balance_quality.py [--clusters N]
[--seed S]``. Writes bench/results/balance_quality.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ortools.sat.python import cp_model

from hvcluster.models.config import BALANCE_LEVELS, ClusterConfig
from hvcluster.models.node import Capacity, Node
from hvcluster.models.vm import HAPolicy, Placement, VMSpec, VMStatus
from hvcluster.scheduler.balance import CpuUse, plan_balance
from hvcluster.scheduler.snapshot import ClusterSnapshot, NodeView, VMView

RESULTS = Path(__file__).parent / "results"
SCALE = 1000  # CPU in milli-cores for CP-SAT's integers


def cluster(rng: random.Random) -> tuple[ClusterSnapshot, CpuUse, str]:
    nodes = []
    for i in range(rng.randint(4, 10)):
        cpus, memory = rng.choice([(16, 65536), (32, 131072), (64, 262144)])
        nodes.append(
            NodeView(
                Node(
                    name=f"n{i}",
                    address="10.0.0.1",
                    capacity=Capacity(cpus=cpus, memory_mib=memory),
                ),
                alive=True,
            )
        )
    names = [n.name for n in nodes]
    # uneven: a few hot nodes take most VMs
    weights = [rng.choice([1, 1, 1, 4, 8]) for _ in names]
    used = {n: [0, 0] for n in names}
    vms: list[VMView] = []
    cpu_vms: dict[str, float] = {}
    groups = 0
    for i in range(rng.randint(20, 100)):
        where = rng.choices(names, weights)[0]
        cap = next(n for n in nodes if n.name == where).node.capacity
        vcpus = rng.choice([1, 2, 4, 8])
        memory = rng.choice([1024, 2048, 4096, 8192, 16384])
        if used[where][0] + vcpus > cap.cpus or used[where][1] + memory > cap.memory_mib:
            continue
        used[where][0] += vcpus
        used[where][1] += memory
        ha: dict[str, Any] = {}
        roll = rng.random()
        if roll < 0.1:
            ha["possible_owners"] = sorted(set(rng.sample(names, 2)) | {where})
        elif roll < 0.2:
            ha["anti_affinity_classes"] = [rng.choice(["dc", "sql"])]
            ha["anti_affinity_enforced"] = True
        elif roll < 0.25 and vms and vms[-1].placement and vms[-1].placement.node == where:
            groups += 1
            prev = vms[-1]
            cls = f"app{groups}"
            prev_ha = prev.spec.ha.model_copy(
                update={"affinity_classes": (cls,), "affinity_enforced": True}
            )
            vms[-1] = VMView(
                prev.spec.model_copy(update={"ha": prev_ha}), prev.placement, prev.status
            )
            ha["affinity_classes"] = [cls]
            ha["affinity_enforced"] = True
        name = f"v{i}"
        spec = VMSpec(name=name, vcpus=vcpus, memory_mib=memory, ha=HAPolicy(**ha))
        status = VMStatus(vm=name, node=where, epoch=1, state="running")
        vms.append(VMView(spec, Placement(node=where, epoch=1), status))
        cpu_vms[name] = round(rng.uniform(0.05, 1.0) * vcpus, 3)
    other = {n: round(rng.uniform(0, 1), 3) for n in names}
    snapshot = ClusterSnapshot(
        now=0.0,
        config=ClusterConfig(),
        nodes={n.name: n for n in nodes},
        vms={v.name: v for v in vms},
    )
    return snapshot, CpuUse(other, cpu_vms), rng.choice(list(BALANCE_LEVELS))


def optimum(
    s: ClusterSnapshot, cpu: CpuUse, level: str, timeout_s: float
) -> tuple[str, int | None]:
    """The fewest moves under the planner's rules, by CP-SAT: ('optimal'|'infeasible'|..., n)."""
    names = list(s.nodes)
    caps = {n: s.nodes[n].node.capacity for n in names}
    where = {v.name: v.placement.node for v in s.vms.values() if v.placement}
    t = BALANCE_LEVELS[level]
    load_cpu = {n: cpu.other.get(n, 0.0) for n in names}
    load_mem = {n: 0 for n in names}
    for v in s.vms.values():
        load_cpu[where[v.name]] += cpu.vms.get(v.name, 0.0)
        load_mem[where[v.name]] += v.spec.memory_mib
    avg_cpu = sum(load_cpu.values()) / sum(c.cpus for c in caps.values())
    avg_mem = sum(load_mem.values()) / sum(c.memory_mib for c in caps.values())
    lim_cpu = {n: int(max(t, avg_cpu) * caps[n].cpus * SCALE + 1e-6) for n in names}
    lim_mem = {n: int(max(t, avg_mem) * caps[n].memory_mib + 1e-6) for n in names}
    over = {
        n for n in names
        if load_cpu[n] * SCALE > lim_cpu[n] + 1e-6 or load_mem[n] > lim_mem[n]
    }  # fmt: skip
    m = cp_model.CpModel()
    x: dict[tuple[str, str], Any] = {}
    for v in s.vms.values():
        src = where[v.name]
        allowed = [src] if src not in over else [
            n for n in names
            if n == src or not v.spec.ha.possible_owners or n in v.spec.ha.possible_owners
        ]  # fmt: skip
        for n in allowed:
            x[v.name, n] = m.NewBoolVar(f"x_{v.name}_{n}")
        m.AddExactlyOne(x[v.name, n] for n in allowed)
    moved = {v: 1 - x[v, where[v]] for v in where}
    present = {}  # on n: placed there now (still counted while it leaves) or arriving
    for (v, n), var in x.items():
        present[v, n] = 1 if where[v] == n else var
    for n in names:
        cpu_expr = sum(round(cpu.vms.get(v, 0.0) * SCALE) * x[v, n] for v in where if (v, n) in x)
        m.Add(round(cpu.other.get(n, 0.0) * SCALE) + cpu_expr <= lim_cpu[n])
        m.Add(sum(s.vms[v].spec.memory_mib * x[v, n] for v in where if (v, n) in x) <= lim_mem[n])
        here = [v for v in where if (v, n) in present]
        m.Add(sum(s.vms[v].spec.vcpus * present[v, n] for v in here) <= caps[n].cpus)
        m.Add(sum(s.vms[v].spec.memory_mib * present[v, n] for v in here) <= caps[n].memory_mib)
        for i, a in enumerate(here):
            for b in here[i + 1 :]:
                ha, hb = s.vms[a].spec.ha, s.vms[b].spec.ha
                shared = set(ha.anti_affinity_classes) & set(hb.anti_affinity_classes)
                if shared and (ha.anti_affinity_enforced or hb.anti_affinity_enforced):
                    pa, pb = present[a, n], present[b, n]
                    if isinstance(pa, int) and isinstance(pb, int):
                        continue  # both there now: the planner leaves that as it is
                    m.Add(pa + pb <= 1)
    for a in where:  # hard affinity groups on one node move whole
        for b in where:
            if a < b and where[a] == where[b]:
                ha, hb = s.vms[a].spec.ha, s.vms[b].spec.ha
                if set(ha.affinity_classes) & set(hb.affinity_classes) and (
                    ha.affinity_enforced or hb.affinity_enforced
                ):
                    for n in names:
                        if (a, n) in x and (b, n) in x:
                            m.Add(x[a, n] == x[b, n])
                        elif (a, n) in x or (b, n) in x:
                            m.Add((x[a, n] if (a, n) in x else x[b, n]) == 0)
    m.Minimize(sum(moved.values()))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = timeout_s
    solver.parameters.num_workers = 1
    status = solver.Solve(m)
    if status == cp_model.OPTIMAL:
        return "optimal", int(solver.ObjectiveValue())
    if status == cp_model.INFEASIBLE:
        return "infeasible", None
    if status == cp_model.FEASIBLE:
        return "feasible", int(solver.ObjectiveValue())
    return "unknown", None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=20.0, help="CP-SAT seconds per cluster")
    args = parser.parse_args()
    rows = []
    for i in range(args.clusters):
        rng = random.Random(f"{args.seed}:{i}")
        s, cpu, level = cluster(rng)
        started = time.perf_counter()
        plan = plan_balance(s, cpu, (), level)
        plan_ms = (time.perf_counter() - started) * 1000
        status, best = optimum(s, cpu, level, args.timeout)
        rows.append(
            {
                "cluster": i,
                "nodes": len(s.nodes),
                "vms": len(s.vms),
                "level": level,
                "over": len(plan.over),
                "planner_moves": len(plan.moves),
                "planner_resolved": not plan.unresolved,
                "planner_ms": round(plan_ms, 2),
                "optimum_status": status,
                "optimum_moves": best,
            }
        )
    both = [r for r in rows if r["planner_resolved"] and r["optimum_status"] == "optimal"]
    planner = sum(r["planner_moves"] for r in both)
    best = sum(r["optimum_moves"] for r in both)
    missed = [
        r
        for r in rows
        if not r["planner_resolved"] and r["optimum_status"] in ("optimal", "feasible")
    ]
    summary = {
        "clusters": len(rows),
        "with_nodes_over": sum(1 for r in rows if r["over"]),
        "compared": len(both),
        "planner_moves": planner,
        "optimum_moves": best,
        "excess_percent": round(100 * (planner - best) / best, 2) if best else 0.0,
        "worse_clusters": sum(1 for r in both if r["planner_moves"] > r["optimum_moves"]),
        "planner_left_over_but_optimum_found": len(missed),
        "both_infeasible": sum(
            1 for r in rows if not r["planner_resolved"] and r["optimum_status"] == "infeasible"
        ),
        "planner_ms_max": max(r["planner_ms"] for r in rows),
        "goal_excess_percent": 5.0,
    }
    out = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": platform.platform(),
        "seed": args.seed,
        "summary": summary,
        "clusters": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "balance_quality.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    ok = summary["excess_percent"] <= 5.0
    print(
        f"planner {planner} moves vs optimum {best} over {len(both)} clusters: "
        f"{summary['excess_percent']} % more (goal <= 5 %): {'met' if ok else 'NOT met'}; "
        f"{len(missed)} cluster(s) the planner left above the level where a plan exists"
    )


if __name__ == "__main__":
    main()
