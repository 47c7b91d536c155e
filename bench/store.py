"""Store throughput and watch fan-out, on a real etcd (started here) and on the memory store.

* sequential CAS: 1,000 transactions one after the other, each comparing the mod revision the
  previous one left (latency per txn: p50, p99);
* concurrent CAS: 1,000 transactions from 50 tasks, each task on its own key; and 50 tasks
  incrementing one shared counter by CAS (conflicts retried) until it reaches 1,000;
* watch fan-out: 10 watchers on one prefix, 1,000 puts; time until every watcher saw all.

Writes bench/results/store.json and prints a summary. ``--data-dir`` puts etcd's data on a
given filesystem (default: a temp dir under /tmp, on disk).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hvcluster.lab.etcd import ETCD_BINARY, EtcdCluster
from hvcluster.store.base import Compare, Put, Store
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.memory_store import MemoryStore

RESULTS = Path(__file__).parent / "results" / "store.json"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def sequential_cas(store: Store, n: int) -> dict[str, Any]:
    key = "/bench/seq"
    mod = await store.put(key, b"0")
    latencies = []
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        t = time.perf_counter()
        result = await store.txn([Compare.mod_is(key, mod)], [Put(key, str(i).encode())])
        latencies.append(time.perf_counter() - t)
        assert result.succeeded
        mod = result.revision
    total = time.perf_counter() - t0
    return {
        "txns": n,
        "seconds": round(total, 3),
        "txn_per_s": round(n / total, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(pct(latencies, 0.99) * 1000, 3),
    }


async def concurrent_cas_own_keys(store: Store, n: int, tasks: int) -> dict[str, Any]:
    async def worker(w: int) -> None:
        key = f"/bench/own/{w}"
        mod = await store.put(key, b"0")
        for i in range(n // tasks):
            result = await store.txn([Compare.mod_is(key, mod)], [Put(key, str(i).encode())])
            assert result.succeeded
            mod = result.revision

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(tasks)))
    total = time.perf_counter() - t0
    return {"txns": n, "tasks": tasks, "seconds": round(total, 3), "txn_per_s": round(n / total, 1)}


async def contended_counter(store: Store, n: int, tasks: int) -> dict[str, Any]:
    key = "/bench/counter"
    await store.put(key, b"0")
    attempts = 0
    done = asyncio.Event()

    async def worker() -> None:
        nonlocal attempts
        while not done.is_set():
            kv = await store.get(key)
            assert kv is not None
            value = int(kv.value)
            if value >= n:
                done.set()
                return
            attempts += 1
            await store.txn(
                [Compare.mod_is(key, kv.mod_revision)], [Put(key, str(value + 1).encode())]
            )

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    total = time.perf_counter() - t0
    kv = await store.get(key)
    assert kv is not None and int(kv.value) == n
    return {
        "increments": n,
        "tasks": tasks,
        "attempts": attempts,
        "conflict_rate": round(1 - n / attempts, 3),
        "seconds": round(total, 3),
        "increments_per_s": round(n / total, 1),
    }


async def fan_out(store: Store, watchers: int, puts: int) -> dict[str, Any]:
    prefix = "/bench/fan/"
    start = await store.revision() + 1
    counts = [0] * watchers
    finished: list[float] = []

    async def watch(i: int) -> None:
        async for _ in store.watch(prefix, start):
            counts[i] += 1
            if counts[i] == puts:
                finished.append(time.perf_counter())
                return

    tasks = [asyncio.create_task(watch(i)) for i in range(watchers)]
    t0 = time.perf_counter()
    for i in range(puts):
        await store.put(f"{prefix}{i % 100}", str(i).encode())
    put_done = time.perf_counter()
    async with asyncio.timeout(120):
        await asyncio.gather(*tasks)
    last = max(finished)
    return {
        "watchers": watchers,
        "puts": puts,
        "puts_seconds": round(put_done - t0, 3),
        "all_seen_seconds": round(last - t0, 3),
        "lag_after_last_put_ms": round(max(0.0, last - put_done) * 1000, 2),
        "events_delivered_per_s": round(watchers * puts / (last - t0), 1),
    }


async def run_all(store: Store, n: int, tasks: int, watchers: int) -> dict[str, Any]:
    return {
        "sequential_cas": await sequential_cas(store, n),
        "concurrent_cas_own_keys": await concurrent_cas_own_keys(store, n, tasks),
        "concurrent_cas_one_counter": await contended_counter(store, n, tasks),
        "watch_fan_out": await fan_out(store, watchers, n),
    }


async def bench_memory(args: argparse.Namespace) -> dict[str, Any]:
    store = MemoryStore()
    try:
        return await run_all(store, args.n, args.tasks, args.watchers)
    finally:
        await store.close()


async def bench_etcd(endpoints: list[str], args: argparse.Namespace) -> dict[str, Any]:
    store = EtcdStore(endpoints, timeout=10)
    try:
        return await run_all(store, args.n, args.tasks, args.watchers)
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="transactions / puts per test")
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--watchers", type=int, default=10)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where etcd keeps its data (default: a temp dir under /tmp)",
    )
    args = parser.parse_args()

    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    version = subprocess.run([ETCD_BINARY, "--version"], capture_output=True, text=True)
    results["machine"]["etcd"] = version.stdout.splitlines()[0] if version.stdout else "?"
    results["memory"] = asyncio.run(bench_memory(args))
    base = Path(tempfile.mkdtemp(prefix="hvc-bench-etcd-", dir=args.data_dir))
    results["etcd_data_dir"] = str(base)
    with EtcdCluster(1, base) as cluster:
        results["etcd"] = asyncio.run(bench_etcd(cluster.endpoints, args))
    subprocess.run(["rm", "-rf", str(base)], check=False)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"store benchmark ({results['machine']['etcd']}, {os.cpu_count()} cpus)")
    for backend in ("memory", "etcd"):
        r = results[backend]
        s, c, k, f = (
            r["sequential_cas"],
            r["concurrent_cas_own_keys"],
            r["concurrent_cas_one_counter"],
            r["watch_fan_out"],
        )
        print(
            f"  {backend:6}  sequential CAS {s['txn_per_s']:>8}/s (p50 {s['p50_ms']} ms, "
            f"p99 {s['p99_ms']} ms) | {c['tasks']} tasks {c['txn_per_s']:>8}/s | "
            f"one counter {k['increments_per_s']:>7}/s ({k['conflict_rate']:.0%} conflicts) | "
            f"fan-out {f['watchers']}x{f['puts']}: all seen in {f['all_seen_seconds']} s "
            f"(lag {f['lag_after_last_put_ms']} ms)"
        )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
