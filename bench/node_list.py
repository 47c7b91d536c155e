"""``GET /nodes`` (``hvc node list``) and ``GET /nodes/<name>`` at scale (issue 16): 64 nodes
and 8,000 VMs (bench/scale.py's cluster: placed by the real scheduler, running) on a memory
store, the real API in process: the first list, then the median time of each call over
``--runs`` calls.

    python bench/node_list.py [--vms 8000] [--nodes 64] [--runs 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import httpx

from hvcluster.api import create_app
from hvcluster.models.config import ClusterConfig
from hvcluster.models.token import Role, issue
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from hvcluster.store.tokens import add_token
from scale import placed, write_cluster


async def measure(args: argparse.Namespace) -> dict[str, float]:
    store, keys = MemoryStore(), Keys("scale")
    nodes, specs, where = placed(args.vms, args.nodes, 0)
    await write_cluster(store, keys, nodes, specs, where, ClusterConfig(name="scale"))
    token, bearer = issue("bench", Role.ADMIN, time.time(), None)
    await add_token(store, keys, token)
    transport = httpx.ASGITransport(app=create_app(store, keys, nodes[0].name))
    out: dict[str, float] = {}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://api/api/v1",
        headers={"Authorization": f"Bearer {bearer}"}, timeout=60,
    ) as client:  # fmt: skip
        t = time.perf_counter()
        (await client.get("/nodes")).raise_for_status()
        out["first_list_s"] = time.perf_counter() - t  # every value decoded once
        for name, path in (("list_s", "/nodes"), ("show_s", f"/nodes/{nodes[0].name}")):
            times = []
            for _ in range(args.runs):
                t = time.perf_counter()
                r = await client.get(path)
                times.append(time.perf_counter() - t)
                r.raise_for_status()
            out[name] = statistics.median(times)
        listed = (await client.get("/nodes")).json()["nodes"]
        out["vms_counted"] = sum(n["vms"] for n in listed)
        out["memory_placed_mib"] = sum(n["memory_placed_mib"] for n in listed)
    await store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vms", type=int, default=8000)
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--runs", type=int, default=7)
    result = asyncio.run(measure(parser.parse_args()))
    for key, value in result.items():
        print(f"{key}: {value:.4f}" if key.endswith("_s") else f"{key}: {value:.0f}")


if __name__ == "__main__":
    main()
