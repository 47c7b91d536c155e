"""``hvc sim fuzz``: random scenarios, each from a seed, run with every invariant checked; a
run that breaks one is shrunk (timeline steps, then VMs, then nodes dropped while it still
breaks one) to a scenario that replays it, written as TOML.

A random scenario: 2 to 5 nodes, up to 8 VMs with random policies (priorities, preferred
and possible owners, anti-affinity, thresholds, failback), and a timeline of 1 to 6 faults
and admin commands, each undone (healed, restarted, resumed) later in most runs.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from hvcluster.simulate.runner import Result, run_scenario
from hvcluster.simulate.scenario import parse_scenario

UNDO = {"crash": "restart", "hang": "unhang", "partition": "heal", "etcd_down": "etcd_up",
        "pause": "resume", "drain": "resume", "stop_vm": "start_vm"}  # fmt: skip
NODE_FAULTS = ("crash", "hang", "partition", "pause", "drain")


def random_scenario(seed: int) -> dict[str, Any]:
    """The scenario of fuzz run ``seed``, as the data a TOML file holds."""
    rng = random.Random(seed)
    nodes = [f"n{i}" for i in range(1, rng.randint(2, 5) + 1)]
    vms: list[dict[str, Any]] = []
    for i in range(1, rng.randint(1, 8) + 1):
        ha: dict[str, Any] = {"priority": rng.choice(["high", "medium", "low"])}
        allowed = nodes
        if rng.random() < 0.2:
            allowed = ha["possible_owners"] = rng.sample(nodes, rng.randint(1, len(nodes)))
        if rng.random() < 0.5:
            ha["preferred_owners"] = rng.sample(allowed, rng.randint(1, len(allowed)))
        if rng.random() < 0.3:
            ha["anti_affinity_classes"] = [rng.choice(["db", "web"])]
            ha["anti_affinity_enforced"] = rng.random() < 0.5
        if rng.random() < 0.2:
            ha["failover_threshold"] = rng.randint(0, 2)
        if rng.random() < 0.3:
            ha["failback"] = {"mode": rng.choice(["never", "immediate"])}
        vms.append({"name": f"vm{i}", "vcpus": rng.randint(1, 2),
                    "memory_mib": rng.choice([256, 512, 1024]), "ha": ha})  # fmt: skip
    timeline: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 6)):
        at = round(rng.uniform(3, 30), 1)
        kind = rng.choice([*NODE_FAULTS, "etcd_down", "vm_crash", "stop_vm", "config"])
        step: dict[str, Any] = {"at": at, "do": kind}
        if kind in NODE_FAULTS:
            step["node"] = rng.choice([*nodes, "@leader"]) if kind == "crash" else rng.choice(nodes)
        elif kind in ("vm_crash", "stop_vm"):
            step["vm"] = rng.choice(vms)["name"]
        elif kind == "config":
            step["set"] = {"quarantine.threshold": rng.randint(1, 3)}
        timeline.append(step)
        undo = UNDO.get(kind)
        if undo and rng.random() < 0.8:
            back = {k: v for k, v in step.items() if k in ("node", "vm")}
            if back.get("node") == "@leader":
                continue  # which node led is not known here: it stays down
            later = round(at + rng.uniform(1, 15), 1)
            timeline.append({"at": later, "do": undo, **back})
    return {
        "name": f"fuzz-{seed}",
        "sim": {"seed": seed, "duration_s": 60.0, "cpus": rng.choice([2, 4]),
                "memory_mib": rng.choice([2048, 4096])},
        "nodes": [{"name": n} for n in nodes],
        "vms": vms,
        "timeline": sorted(timeline, key=lambda s: s["at"]),
    }  # fmt: skip


@dataclass
class Failure:
    seed: int
    result: Result
    shrunk: dict[str, Any]  # the smallest scenario found that still breaks an invariant


async def fuzz_one(seed: int) -> Result:
    return await run_scenario(parse_scenario(random_scenario(seed), f"fuzz seed {seed}"), seed)


async def shrink(data: dict[str, Any], seed: int, budget: int = 40) -> dict[str, Any]:
    """Drop what the breach does not need: each timeline step, then each VM, then each node
    (with the steps naming it), keeping a drop when the run still breaks an invariant."""

    async def fails(candidate: dict[str, Any]) -> bool:
        try:
            scenario = parse_scenario(candidate)
        except Exception:  # a drop that leaves the scenario inconsistent is not a candidate
            return False
        return bool((await run_scenario(scenario, seed)).violations)

    runs = 0
    for key in ("timeline", "vms", "nodes"):
        i = 0
        while i < len(data[key]) and runs < budget:
            if key == "nodes" and len(data["nodes"]) == 1:
                break
            candidate = _without(data, key, i)
            runs += 1
            if await fails(candidate):
                data = candidate
            else:
                i += 1
    return data


def _without(data: dict[str, Any], key: str, i: int) -> dict[str, Any]:
    out = {**data, key: [x for j, x in enumerate(data[key]) if j != i]}
    if key in ("vms", "nodes"):
        gone = data[key][i]["name"]
        field = "vm" if key == "vms" else "node"
        out["timeline"] = [s for s in out["timeline"] if s.get(field) != gone]
        if key == "nodes":
            out["vms"] = [_drop_node(vm, gone) for vm in out["vms"]]
    return out


def _drop_node(vm: dict[str, Any], node: str) -> dict[str, Any]:
    ha = dict(vm.get("ha", {}))
    for owners in ("preferred_owners", "possible_owners"):
        if owners in ha:
            ha[owners] = [n for n in ha[owners] if n != node]
            if not ha[owners]:
                del ha[owners]
    return {**vm, "ha": ha}


async def fuzz(
    runs: int,
    seed: int = 0,
    on_run: Callable[[int, Result], Awaitable[None] | None] | None = None,
    shrink_failures: bool = True,
) -> list[Failure]:
    """Run ``runs`` random scenarios (seeds ``seed`` .. ``seed + runs - 1``); the failures,
    each with its shrunk replay (``shrink_failures``; else the whole scenario)."""
    failures = []
    for s in range(seed, seed + runs):
        result = await fuzz_one(s)
        if on_run is not None:
            maybe = on_run(s, result)
            if maybe is not None:
                await maybe
        if result.violations:
            data = random_scenario(s)
            failures.append(Failure(s, result, await shrink(data, s) if shrink_failures else data))
    return failures


def to_toml(data: dict[str, Any]) -> str:
    """A scenario's data as TOML (what a shrunk replay is written as)."""
    out = [f"name = {_value(data.get('name', ''))}"]
    if data.get("sim"):
        out += ["", "[sim]", *(f"{k} = {_value(v)}" for k, v in data["sim"].items())]
    if data.get("cluster"):
        out += ["", "[cluster]", *(f"{k} = {_value(v)}" for k, v in data["cluster"].items())]
    for key in ("nodes", "vms", "timeline"):
        for item in data.get(key, []):
            out += ["", f"[[{key}]]", *(f"{k} = {_value(v)}" for k, v in item.items())]
    return "\n".join(out) + "\n"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f'"{k}" = {_value(x)}' for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")
