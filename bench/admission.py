"""Admission control at scale: creating an HA VM in a cluster of 8,000 VMs on 64 nodes.

With ``admission.node_failures_tolerated`` set, the API counts, on each create or start of
an HA VM, how many node failures the running HA VMs would survive with it
(:mod:`hvcluster.models.admission`): it reads the cluster and places the failed nodes' VMs
on the rest. This times ``POST /vms`` of HA VMs through the real API on a real etcd
(started here), each round with admission control off (the baseline: the same request
without the count) and on, in turns; and the count alone (``admit``, pure).
Goal: a create with admission control on < 1 s. Writes bench/results/admission.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hvcluster.models.admission import admit
from hvcluster.models.base import encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.vm import VMSpec
from hvcluster.store.keys import Keys
from scale import placed, write_cluster

RESULTS = Path(__file__).parent / "results" / "admission.json"


def config(tolerated: int) -> ClusterConfig:
    return ClusterConfig.model_validate(
        {"admission": {"node_failures_tolerated": tolerated, "action": "warn"}}
    )


async def run(args: argparse.Namespace, endpoint: str) -> dict[str, Any]:
    import httpx

    from hvcluster.api import create_app
    from hvcluster.models.token import Role, issue
    from hvcluster.store.etcd import EtcdStore
    from hvcluster.store.tokens import add_token

    nodes, specs, where = placed(args.vms, args.nodes, args.seed)
    keys = Keys("bench-admission")
    store = EtcdStore(endpoint, timeout=30)
    try:
        await write_cluster(store, keys, nodes, specs, where, config(0))
        token, bearer = issue("bench", Role.ADMIN, time.time(), None)
        await add_token(store, keys, token)
        transport = httpx.ASGITransport(app=create_app(store, keys, nodes[0].name))
        timings: dict[str, list[float]] = {"off": [], "on": []}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api/api/v1",
            headers={"Authorization": f"Bearer {bearer}"}, timeout=60,
        ) as client:  # fmt: skip
            for i in range(args.rounds):
                for mode in ("off", "on"):
                    await store.put(keys.config, encode(config(1 if mode == "on" else 0)))
                    body = {"name": f"adm-{mode}-{i:03d}", "memory_mib": 1024,
                            "desired_state": "stopped", "ha": {"priority": "high"}}  # fmt: skip
                    r = await client.post("/vms", json=body)
                    r.raise_for_status()
                    start = time.perf_counter()
                    r = await client.post(f"/vms/{body['name']}/start")
                    r.raise_for_status()
                    timings[mode].append(time.perf_counter() - start)
        by_node: dict[str, list[VMSpec]] = {}
        for spec in specs:
            by_node.setdefault(where[spec.name], []).append(spec)
        new = VMSpec.model_validate({"name": "new", "memory_mib": 1024, "ha": {"priority": "high"}})
        counts = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            admit(new, nodes, by_node, 1)
            counts.append(time.perf_counter() - t)
    finally:
        await store.close()
    on, off = statistics.median(timings["on"]), statistics.median(timings["off"])
    return {
        "vms": args.vms,
        "nodes": args.nodes,
        "rounds": args.rounds,
        "start_ha_vm_s_median": {"admission_off": round(off, 3), "admission_on": round(on, 3)},
        "start_ha_vm_s_max_on": round(max(timings["on"]), 3),
        "count_alone_s_median": round(statistics.median(counts), 3),
        "goal": "starting an HA VM with admission control on < 1 s",
        "met": on < 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=8000)
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from hvcluster.lab.etcd import EtcdCluster

    base = Path(tempfile.mkdtemp(prefix="hvc-admission-"))
    try:
        with EtcdCluster(1, base) as cluster:
            result = asyncio.run(run(args, cluster.endpoints[0]))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    result["when"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    s = result["start_ha_vm_s_median"]
    print(
        f"{args.vms} VMs on {args.nodes} nodes: starting an HA VM takes "
        f"{s['admission_off']:.3f} s with admission control off, {s['admission_on']:.3f} s on "
        f"(max {result['start_ha_vm_s_max_on']:.3f} s); the count alone "
        f"{result['count_alone_s_median']:.3f} s; goal < 1 s: "
        f"{'met' if result['met'] else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
