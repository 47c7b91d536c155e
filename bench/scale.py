"""Scale: 64 nodes and 8,000 VMs, each part against its goal (issue 16).

1. ``placement``: the real scheduler (:func:`hvcluster.scheduler.plan.plan`) places 8,000 new
   VMs (mixed sizes and priorities, some in hard and soft anti-affinity classes, some with
   possible owners) on 64 nodes. Goal < 1 s, 0 rule violations (capacity, owners, hard
   anti-affinity: checked here on the result, not by the scheduler's own code).
2. ``controller``: those VMs written to a real etcd (started here), placed and running; the
   real controller's steady cycle (read, decide, apply) and its process's RSS. Goal: cycle
   < 1 s, RSS < 300 MiB.
3. ``failover``: on the same cluster, a node with 125 VMs loses its lease; from the cycle
   that declares it dead (the event ``node.dead``) until every one of its VMs is placed
   again. Goal < 1 s, recovered in priority order.
4. ``agent``: one node agent with the sim driver and 1,000 VMs placed on it (in a cluster of
   8,000 on real etcd): its first reconcile (1,000 starts) and its steady reconcile, and
   its RSS. Goal: reconcile < 1 s, RSS < 200 MiB.
5. ``api``: a sim cluster (4 nodes, real daemons, memory store, real clock) and the API in
   process: create → running for VMs created one at a time (p50), and 1,000 VMs created
   20 at a time. Goal: p50 < 50 ms; 1,000 created (and running) < 5 s.

Each part runs in its own process (``--part NAME``), so each RSS is its own. Writes
bench/results/scale.json and prints a summary; ``--vms``/``--nodes`` for smaller runs,
``--profile DIR`` writes a cProfile of each part there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hvcluster.models.base import encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.fit import conflicts, resident
from hvcluster.models.lifecycle import VMState
from hvcluster.models.node import Capacity, Node, NodeAlive
from hvcluster.models.vm import HAPolicy, Placement, Priority, VMSpec, VMStatus
from hvcluster.scheduler import decisions as dec
from hvcluster.scheduler.plan import plan
from hvcluster.scheduler.snapshot import ClusterSnapshot, NodeView, VMView
from hvcluster.store.base import Put, Store
from hvcluster.store.keys import Keys

RESULTS = Path(__file__).parent / "results" / "scale.json"
TXN_OPS = 128  # etcd's default --max-txn-ops
PRIORITY_RANK = {Priority.HIGH: 0, Priority.MEDIUM: 1, Priority.LOW: 2}
# Each node: 192 vCPUs, 384 GiB (8,000 VMs of 1-2 vCPUs and 1-4 GiB fill 64 of them ~87 % of CPU).
NODE_CAPACITY = Capacity(cpus=192, memory_mib=384 * 1024)


def rss_mib() -> float:
    """This process's resident memory now (VmRSS), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def node_names(count: int) -> list[str]:
    return [f"n{i:02d}" for i in range(count)]


def make_specs(count: int, nodes: list[str], seed: int) -> list[VMSpec]:
    """VMs of mixed sizes and priorities; every 40th in a hard anti-affinity class (of 16),
    every 10th in a soft one, every 25th limited to 8 possible owners."""
    rng = random.Random(seed)
    specs = []
    for i in range(count):
        ha: dict[str, Any] = {"priority": rng.choice(list(Priority))}
        if i % 40 == 0:
            ha.update(anti_affinity_classes=[f"hard-{i // 40 % 16}"], anti_affinity_enforced=True)
        elif i % 10 == 0:
            ha.update(anti_affinity_classes=[f"soft-{i % 7}"])
        if i % 25 == 0:
            ha["possible_owners"] = sorted(rng.sample(nodes, min(8, len(nodes))))
        specs.append(
            VMSpec(
                name=f"vm-{i:05d}",
                uid=f"{i:032x}",
                vcpus=rng.choice([1, 1, 2]),
                memory_mib=rng.choice([1024, 2048, 4096]),
                ha=HAPolicy(**ha),
            )
        )
    return specs


def make_nodes(names: list[str]) -> list[Node]:
    return [Node(name=n, address="10.0.0.1", capacity=NODE_CAPACITY) for n in names]


def violations(specs: dict[str, VMSpec], where: dict[str, str], nodes: list[Node]) -> list[str]:
    """Broken rules of a placement, checked from scratch: capacity, possible owners, hard
    anti-affinity (either VM enforcing a shared class)."""
    found = []
    by_node: dict[str, list[VMSpec]] = {n.name: [] for n in nodes}
    for vm, node in where.items():
        by_node[node].append(specs[vm])
    for node in nodes:
        here = by_node[node.name]
        cpus = sum(s.vcpus for s in here)
        memory = sum(s.memory_mib for s in here)
        if cpus > node.capacity.cpus or memory > node.capacity.memory_mib:
            found.append(f"{node.name} over capacity: {cpus} vCPUs, {memory} MiB")
        for s in here:
            owners = s.ha.possible_owners
            if owners and node.name not in owners:
                found.append(f"{s.name} on {node.name}, not a possible owner")
            hard = conflicts(s, [resident(o) for o in here if o.ha.anti_affinity_classes]).hard
            if hard:
                found.append(f"{s.name} on {node.name} with {hard[0][0]} (hard anti-affinity)")
    return found


def placed(
    count: int, node_count: int, seed: int
) -> tuple[list[Node], list[VMSpec], dict[str, str]]:
    """The cluster of part 1: nodes, specs, and where the real scheduler placed each VM."""
    names = node_names(node_count)
    nodes = make_nodes(names)
    specs = make_specs(count, names, seed)
    snapshot = ClusterSnapshot(
        now=time.time(),
        config=ClusterConfig(name="scale"),
        nodes={n.name: NodeView(n, alive=True) for n in nodes},
        vms={s.name: VMView(spec=s, placement=None, status=None) for s in specs},
    )
    where = {d.vm: d.node for d in plan(snapshot) if isinstance(d, dec.Place)}
    return nodes, specs, where


# --- part 1 ------------------------------------------------------------------------------
def part_placement(args: argparse.Namespace) -> dict[str, Any]:
    names = node_names(args.nodes)
    nodes = make_nodes(names)
    specs = make_specs(args.vms, names, args.seed)
    snapshot = ClusterSnapshot(
        now=time.time(),
        config=ClusterConfig(name="scale"),
        nodes={n.name: NodeView(n, alive=True) for n in nodes},
        vms={s.name: VMView(spec=s, placement=None, status=None) for s in specs},
    )
    times = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        decisions = plan(snapshot)
        times.append(time.perf_counter() - t0)
    where = {d.vm: d.node for d in decisions if isinstance(d, dec.Place)}
    broken = violations({s.name: s for s in specs}, where, nodes)
    return {
        "vms": len(specs),
        "nodes": len(nodes),
        "placed": len(where),
        "not_placed": len(specs) - len(where),
        "seconds": [round(t, 3) for t in times],
        "seconds_median": round(statistics.median(times), 3),
        "violations": len(broken),
        "violation_examples": broken[:5],
        "goal": "< 1 s, 0 violations",
        "met": statistics.median(times) < 1.0 and not broken and len(where) == len(specs),
    }


# --- the cluster in etcd ------------------------------------------------------------------
async def write_batched(store: Store, puts: list[Put]) -> None:
    """``puts`` in transactions of at most :data:`TXN_OPS` ops each."""
    for i in range(0, len(puts), TXN_OPS):
        result = await store.txn((), puts[i : i + TXN_OPS])
        assert result.succeeded


async def write_cluster(
    store: Store,
    keys: Keys,
    nodes: list[Node],
    specs: list[VMSpec],
    where: dict[str, str],
    config: ClusterConfig,
) -> dict[str, int]:
    """Nodes alive (a lease each), every VM placed at epoch 1 and reported running there;
    the leases by node."""
    await store.put(keys.config, encode(config))
    leases = {}
    puts = []
    for node in nodes:
        lease = await store.grant(600)
        leases[node.name] = lease.id
        puts.append(Put(keys.node(node.name), encode(node)))
        alive = NodeAlive(node=node.name, lease=lease.id, since=time.time())
        puts.append(Put(keys.alive(node.name), encode(alive), lease=lease.id))
    await write_batched(store, puts)
    puts = []
    now = time.time()
    for spec in specs:
        node = where[spec.name]
        puts.append(Put(keys.vm(spec.name), encode(spec)))
        puts.append(
            Put(keys.placement(spec.name), encode(Placement(node=node, epoch=1, uid=spec.uid)))
        )
        status = VMStatus(
            vm=spec.name,
            node=node,
            epoch=1,
            state=VMState.RUNNING,
            pid=1000,
            since=now,
            uid=spec.uid,
        )
        puts.append(Put(keys.status(spec.name), encode(status)))
    await write_batched(store, puts)
    return leases


class Said:
    """A controller's ``say``: every event with the time it was said."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str, str]] = []

    async def __call__(self, kind: str, subject: str, reason: str) -> None:
        self.events.append((time.perf_counter(), kind, subject, reason))


# --- parts 2 and 3 ----------------------------------------------------------------------
async def controller_and_failover(args: argparse.Namespace) -> dict[str, Any]:
    from hvcluster.controller.loop import Controller
    from hvcluster.simulate.cluster import FAST
    from hvcluster.store.etcd import EtcdStore

    nodes, specs, where = placed(args.vms, args.nodes, args.seed)
    assert len(where) == len(specs), "part 1 left VMs unplaced"
    config = FAST.model_copy(update={"name": "scale"})  # hvc sim's short timings
    keys = Keys("scale-controller")
    store = EtcdStore(args.etcd, timeout=30)
    try:
        t0 = time.perf_counter()
        leases = await write_cluster(store, keys, nodes, specs, where, config)
        written = time.perf_counter() - t0
        said = Said()
        controller = Controller(store, keys, nodes[0].name, said, is_leader=lambda: True)
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
        cycles = []
        for _ in range(args.rounds + 1):
            t = time.perf_counter()
            await controller.cycle()
            cycles.append(time.perf_counter() - t)
        if args.profile:
            prof.disable()
            prof.dump_stats(Path(args.profile) / "controller.prof")
        rss = rss_mib()
        steady = cycles[1:]  # the first: a new controller (its election event, first reads)
        decided = [e for e in said.events if e[1] not in ("controller.elected",)]
        controller_result = {
            "vms": len(specs),
            "nodes": len(nodes),
            "keys_written_seconds": round(written, 2),
            "first_cycle_seconds": round(cycles[0], 3),
            "cycle_seconds": [round(c, 3) for c in steady],
            "cycle_median_seconds": round(statistics.median(steady), 3),
            "rss_mib": round(rss, 1),
            "decisions_in_steady_state": len(decided),
            "goal": "cycle < 1 s, RSS < 300 MiB",
            "met": statistics.median(steady) < 1.0 and rss < 300,
        }
        # The failover: the busiest node below the controller's loses its lease.
        counts: dict[str, int] = {}
        for node in where.values():
            counts[node] = counts.get(node, 0) + 1
        victim = max((n for n in counts if n != nodes[0].name), key=lambda n: (counts[n], n))
        by_name = {s.name: s for s in specs}
        # its VMs to restart elsewhere (those of priority no_auto_start stay down, as asked)
        expected = [
            vm for vm, node in where.items()
            if node == victim and by_name[vm].ha.priority in PRIORITY_RANK
        ]  # fmt: skip
        said.events.clear()
        await store.revoke(leases[victim])
        lost_at = time.perf_counter()
        recovered: dict[str, float] = {}
        failover_cycles = []
        deadline = lost_at + 30
        while len(recovered) < len(expected) and time.perf_counter() < deadline:
            t = time.perf_counter()
            await controller.cycle()
            failover_cycles.append(time.perf_counter() - t)
            recovered.update(
                {e[2].removeprefix("vm/"): e[0] for e in said.events if e[1] == "vm.recovered"}
            )
            await asyncio.sleep(0.05)
        dead_at = next((e[0] for e in said.events if e[1] == "node.dead"), None)
        order = [e[2].removeprefix("vm/") for e in said.events if e[1] == "vm.recovered"]
        ranks = [PRIORITY_RANK[by_name[v].ha.priority] for v in order]
        in_order = ranks == sorted(ranks)
        last = max(recovered.values()) if recovered else None
        took = last - dead_at if last is not None and dead_at is not None else None
        kinds: dict[str, int] = {}
        for e in said.events:
            kinds[e[1]] = kinds.get(e[1], 0) + 1
        failover_result = {
            "events": kinds,
            "not_recovered_examples": [e[3] for e in said.events if e[1] == "vm.failed"][:3],
            "node": victim,
            "vms_on_it": counts[victim],
            "to_recover": len(expected),
            "recovered": len(recovered),
            "lease_lost_to_declared_dead_seconds": round(dead_at - lost_at, 3) if dead_at else None,
            "declared_dead_to_all_placed_seconds": round(took, 3) if took is not None else None,
            "in_priority_order": in_order,
            "cycles_seconds": [round(c, 3) for c in failover_cycles if c > 0.05],
            "goal": "all placed < 1 s after declared dead, in priority order",
            "met": took is not None and took < 1.0 and in_order and len(recovered) == len(expected),
        }
        return {"controller": controller_result, "failover": failover_result}
    finally:
        await store.delete(keys.root, prefix=True)
        await store.close()


async def agent(args: argparse.Namespace) -> dict[str, Any]:
    from hvcluster.agent.node import NodeAgent, NodeIdentity
    from hvcluster.drivers.sim import SimDriver
    from hvcluster.drivers.sim.model import SimParams
    from hvcluster.drivers.sim.state import SimHost
    from hvcluster.store.etcd import EtcdStore

    names = node_names(args.nodes)
    here = names[0]
    nodes = make_nodes(names)
    specs = make_specs(args.vms, names, args.seed)
    # the first --agent-vms VMs on this node; the others spread over the rest
    where = {
        s.name: (here if i < args.agent_vms else names[1 + i % (len(names) - 1)])
        for i, s in enumerate(specs)
    }
    keys = Keys("scale-agent")
    store = EtcdStore(args.etcd, timeout=30)
    config = ClusterConfig(name="scale")
    driver = SimDriver(
        host=SimHost(cpus=4096, memory_mib=8 * 1024 * 1024, check_disks=False),
        params=SimParams(boot_s=0.0, shutdown_s=0.0),
    )
    try:
        leases = await write_cluster(store, keys, nodes, specs, where, config)
        # This node's VMs were running before (statuses say so): the agent, new, finds none
        # running and starts each. Its statuses: cleared, so that each start is a first one.
        await store.delete(keys.prefix("status"), prefix=True)
        node_agent = NodeAgent(
            store, keys, NodeIdentity(here, "127.0.0.1", 0), driver, config,
            say=Said(), lease=lambda: leases[here], may_start=lambda: None,
        )  # fmt: skip
        await node_agent.register_node(await driver.inventory())
        t0 = time.perf_counter()
        first = await node_agent.cycle()
        first_s = time.perf_counter() - t0
        running = sum(1 for vm in await driver.list() if vm.state is VMState.RUNNING)
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
        cycles = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            await node_agent.cycle()
            cycles.append(time.perf_counter() - t)
        if args.profile:
            prof.disable()
            prof.dump_stats(Path(args.profile) / "agent.prof")
        rss = rss_mib()
        return {
            "agent": {
                "vms_here": args.agent_vms,
                "vms_in_cluster": len(specs),
                "first_reconcile_seconds": round(first_s, 3),
                "first_reconcile_actions": len(first),
                "running_after_first": running,
                "reconcile_seconds": [round(c, 3) for c in cycles],
                "reconcile_median_seconds": round(statistics.median(cycles), 3),
                "rss_mib": round(rss, 1),
                "goal": "reconcile < 1 s, RSS < 200 MiB",
                "met": statistics.median(cycles) < 1.0 and rss < 200,
            }
        }
    finally:
        await driver.close()
        await store.delete(keys.root, prefix=True)
        await store.close()


async def api(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    from hvcluster.api import create_app
    from hvcluster.drivers.sim.model import SimParams
    from hvcluster.models.token import Role, issue
    from hvcluster.simulate.cluster import FAST, SimCluster
    from hvcluster.store.tokens import add_token

    tmp = Path(tempfile.mkdtemp(prefix="hvc-scale-api-"))
    sim = SimCluster(
        tmp, FAST, cpus=1024, memory_mib=1024 * 1024, params=SimParams(boot_s=0.0, shutdown_s=0.0)
    )
    running: dict[str, float] = {}  # VM -> when its status first said running
    seen: dict[str, asyncio.Event] = {}

    async def watch() -> None:
        start = await sim.store.revision() + 1
        prefix = sim.keys.prefix("status")
        async for event in sim.store.watch(prefix, start):
            if event.value and b'"running"' in event.value:
                name = event.key[len(prefix) :]
                running.setdefault(name, time.perf_counter())
                seen.setdefault(name, asyncio.Event()).set()

    async def arrived(name: str, timeout: float) -> None:
        """Return once ``name`` was seen running (or after ``timeout``)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(seen.setdefault(name, asyncio.Event()).wait(), timeout)

    try:
        await sim.start(*(f"n{i}" for i in range(4)))
        token, bearer = issue("bench", Role.ADMIN, time.time(), None)
        await add_token(sim.store, sim.keys, token)
        watcher = asyncio.create_task(watch())
        transport = httpx.ASGITransport(app=create_app(sim.store, sim.keys, "n0"))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api/api/v1",
            headers={"Authorization": f"Bearer {bearer}"}, timeout=60,
        ) as client:  # fmt: skip
            await asyncio.sleep(2)  # a controller elected
            one_by_one = []
            for i in range(args.api_single):
                name = f"one-{i:03d}"
                t = time.perf_counter()
                r = await client.post("/vms", json={"name": name, "vcpus": 1, "memory_mib": 128})
                r.raise_for_status()
                await arrived(name, 10)
                one_by_one.append(running.get(name, time.perf_counter()) - t)
            sem = asyncio.Semaphore(20)

            async def create(name: str) -> None:
                async with sem:
                    r = await client.post(
                        "/vms", json={"name": name, "vcpus": 1, "memory_mib": 128}
                    )
                    r.raise_for_status()

            names = [f"many-{i:04d}" for i in range(args.api_many)]
            if args.profile:
                prof = cProfile.Profile()
                prof.enable()
            t0 = time.perf_counter()
            await asyncio.gather(*(create(n) for n in names))
            created = time.perf_counter() - t0
            await asyncio.gather(*(arrived(n, 60) for n in names))
            all_running = max(running.get(n, time.perf_counter()) for n in names) - t0
            if args.profile:
                prof.disable()
                prof.dump_stats(Path(args.profile) / "api.prof")
        watcher.cancel()
        p50 = statistics.median(one_by_one)
        return {
            "api": {
                "store": "memory (the API, agents and controller are the real code)",
                "create_to_running_ms_p50": round(p50 * 1000, 1),
                "create_to_running_ms_max": round(max(one_by_one) * 1000, 1),
                "single_creates": len(one_by_one),
                "many": args.api_many,
                "many_created_seconds": round(created, 2),
                "many_all_running_seconds": round(all_running, 2),
                "many_running": sum(1 for n in names if n in running),
                "goal": "create -> running p50 < 50 ms; 1,000 created and all running < 5 s",
                "met": p50 < 0.05 and created < 5 and all_running < 5,
            }
        }
    finally:
        await sim.stop()
        shutil.rmtree(tmp, ignore_errors=True)


PARTS = {
    "placement": lambda a: {"placement": part_placement(a)},
    "controller": lambda a: asyncio.run(controller_and_failover(a)),
    "agent": lambda a: asyncio.run(agent(a)),
    "api": lambda a: asyncio.run(api(a)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=8000)
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--agent-vms", type=int, default=1000)
    parser.add_argument("--api-single", type=int, default=50)
    parser.add_argument("--api-many", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--part", choices=sorted(PARTS), action="append")
    parser.add_argument("--etcd", help="endpoint of a running etcd (a --part run alone)")
    parser.add_argument("--profile", help="write a cProfile of each part to this dir")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.etcd or (args.part and len(args.part) == 1 and args.part[0] == "placement"):
        part = args.part[0]
        print(json.dumps(PARTS[part](args)))
        return
    from hvcluster.lab.etcd import EtcdCluster

    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "host": platform.node(),
        "python": platform.python_version(),
        "load_before": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    base = Path(
        tempfile.mkdtemp(
            prefix="hvc-scale-etcd-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None
        )
    )
    passed = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
              if k not in ("part", "etcd", "out") and v is not None]  # fmt: skip
    try:
        with EtcdCluster(1, base) as cluster:  # its data on tmpfs when there is one
            for part in args.part or list(PARTS):
                command = [
                    sys.executable,
                    __file__,
                    *passed,
                    "--part",
                    part,
                    "--etcd",
                    cluster.endpoints[0],
                ]
                out = subprocess.run(command, capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"part {part} failed:\n{out.stderr[-4000:]}")
                results.update(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:  # (a part that fails too)
        shutil.rmtree(base, ignore_errors=True)
    results["load_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for name in ("placement", "controller", "failover", "agent", "api"):
        if name in results:
            r = results[name]
            shown = {k: v for k, v in r.items() if not isinstance(v, list | dict)}
            print(f"{name:10} {'MET ' if r['met'] else 'MISS'} {shown}")


if __name__ == "__main__":
    main()
