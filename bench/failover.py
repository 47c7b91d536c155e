"""Failover time in a real lab: repeated host failures with the sim and the qemu driver,
default timings (or ``--profile fast``). Two faults: ``kill`` (a host crash: agent, watchdog
and VMs SIGKILLed) and ``partition`` (a lab with a network namespace per node; the host's link
is cut, everything on it keeps running, so its watchdog must kill its VMs first; healed after
each round). For each failure, seconds from the fault to:

- detected: the controller saw the node's alive key gone (its lease expired);
- decided: the controller recorded the recovery (placement moved, epoch + 1);
- running: the new host's agent reported the VM running;
- heartbeat (qemu): the guest printed its first heartbeat on the new host.

Writes bench/results/failover.json (``--profile fast``: failover-fast.json) and prints p50/p99
per step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvcluster.guestimage.image import DEFAULT_CACHE, require_image
from hvcluster.guestimage.testguest import create_disk, heartbeats
from hvcluster.lab import cluster, faults
from hvcluster.lab.state import LabState, load
from hvcluster.models.config import PROFILES, ClusterConfig, QuarantineSettings

RESULTS = Path(__file__).parent / "results"
# The lab's admin token, once the lab is up (every request sends it).
HEADERS: dict[str, str] = {}
VM = "bench-1"


def api_of(state: LabState, avoid: str) -> str:
    return next(state.api_url(n) for n in state.nodes if n.name != avoid)


def events_since(api: str, t0: float) -> list[dict[str, Any]]:
    data = httpx.get(f"{api}/api/v1/events?limit=300", headers=HEADERS, timeout=5).json()
    return [e["event"] for e in data["events"] if e["event"]["time"] >= t0]


def first(events: list[dict[str, Any]], kind: str, subject: str) -> float | None:
    times = [e["time"] for e in events if e["kind"] == kind and e["subject"] == subject]
    return min(times) if times else None


def one_failure(lab_dir: Path, driver: str, fault: str) -> dict[str, float]:
    state = load(lab_dir)
    vm = httpx.get(f"{api_of(state, '')}/api/v1/vms/{VM}", headers=HEADERS, timeout=5).json()
    victim = vm["placement"]["node"]
    epoch = vm["placement"]["epoch"]
    api = api_of(state, victim)
    beats_before = 0
    t0 = time.time()
    faults.fault(state, fault, victim)
    result: dict[str, float] = {}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            now_vm = httpx.get(f"{api}/api/v1/vms/{VM}", headers=HEADERS, timeout=5).json()
        except httpx.HTTPError:
            continue
        p, s = now_vm.get("placement") or {}, now_vm.get("status") or {}
        if (
            p.get("epoch", 0) > epoch
            and s.get("state") == "running"
            and s.get("epoch") == p["epoch"]
        ):
            if "running" not in result:
                result["running"] = time.time() - t0
                new_node = p["node"]
            if driver != "qemu":
                break
            serial = Path(state.node(new_node).run_dir) / "vms" / VM / "serial.log"
            if len(heartbeats(serial)) > beats_before:
                result["heartbeat"] = time.time() - t0
                break
    events = events_since(api, t0)
    for step, kind, subject in (
        ("detected", "controller.waiting", f"node/{victim}"),
        ("decided", "vm.recovered", f"vm/{VM}"),
    ):
        t = first(events, kind, subject)
        if t is not None:
            result[step] = t - t0
    if fault == "partition":
        faults.fault(load(lab_dir), "heal", victim)
    else:
        cluster.start_node(load(lab_dir), victim)
    _wait_back(load(lab_dir), api, victim)
    return result


def _wait_back(state: LabState, api: str, node: str) -> None:
    """Until ``node`` is alive and its API answers (an agent registers, with its liveness
    first, well before its API listens: a QEMU node probes its accelerator in between)."""
    end = time.monotonic() + 60
    while time.monotonic() < end:
        nodes = httpx.get(f"{api}/api/v1/nodes", headers=HEADERS, timeout=5).json()["nodes"]
        if any(n["name"] == node and n["alive"] for n in nodes):
            try:
                own = state.api_url(state.node(node))
                if httpx.get(f"{own}/api/v1/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    raise SystemExit(f"{node} did not come back")


def bench_config(profile: str = "default") -> ClusterConfig:
    """The profile's timings; quarantine off, or three nodes crashed over and over would all
    end up quarantined (as WSFC would) and the later rounds would measure nothing."""
    return ClusterConfig.with_profile(profile, quarantine=QuarantineSettings(threshold=10_000))


def results_file(profile: str) -> Path:
    """Each profile keeps its own results."""
    return RESULTS / ("failover.json" if profile == "default" else f"failover-{profile}.json")


def run(
    driver: str, fault: str, rounds: int, work: Path, profile: str = "default"
) -> list[dict[str, float]]:
    lab_dir = work / f"lab-{driver}"
    network = "netns" if fault == "partition" else "loopback"
    cluster.up(
        3,
        driver,  # type: ignore[arg-type]
        lab_dir,
        DEFAULT_CACHE,
        bench_config(profile),
        log=lambda _: None,
        network=network,  # type: ignore[arg-type]
    )
    try:
        state = load(lab_dir)
        HEADERS.update(state.auth())
        os.environ["SSL_CERT_FILE"] = state.ca  # httpx checks the lab's https APIs with it
        spec: dict[str, Any] = {
            "name": VM,
            "memory_mib": 128,
            "ha": {"priority": "high", "failover_threshold": 1000},
        }
        if driver == "qemu":
            disk = create_disk(Path(state.shared_dir) / f"{VM}.qcow2")
            spec["boot"] = require_image(DEFAULT_CACHE).boot().model_dump()
            spec["disks"] = [{"path": str(disk)}]
        httpx.post(
            f"{state.api[0]}/api/v1/vms", json=spec, headers=HEADERS, timeout=10
        ).raise_for_status()
        time.sleep(12 if driver == "qemu" else 3)  # booted
        out = []
        for i in range(rounds):
            r = one_failure(lab_dir, driver, fault)
            done = ", ".join(f"{k} {v:.2f}s" for k, v in r.items())
            print(f"  {driver} {fault} {i + 1}: {done}")
            out.append(r)
        return out
    finally:
        cluster.down(lab_dir, log=lambda _: None)


def summary(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    steps = sorted({k for s in samples for k in s})
    out = {}
    for step in steps:
        values = sorted(s[step] for s in samples if step in s)
        p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
        out[step] = {"p50": statistics.median(values), "p99": p99, "n": len(values)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--drivers", default="sim,qemu")
    parser.add_argument("--faults", default="kill,partition", help="kill and/or partition")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hvc-bench-failover"))
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default")
    args = parser.parse_args()
    config = bench_config(args.profile)
    results: dict[str, Any] = {
        "rounds": args.rounds,
        "profile": args.profile,
        "config": config.model_dump(),
    }
    cases = [(d, f) for f in args.faults.split(",") for d in args.drivers.split(",")]
    for driver, fault in cases:
        samples = run(driver, fault, args.rounds, args.work, args.profile)
        results[f"{driver}/{fault}"] = {"samples": samples, "summary": summary(samples)}
    out = results_file(args.profile)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"failover ({args.profile} timings), {args.rounds} failures each, in {out}:")
    for driver, fault in cases:
        for step, v in results[f"{driver}/{fault}"]["summary"].items():
            case = f"{driver}/{fault}"
            print(f"  {case:15} {step:10} p50 {v['p50']:.2f}s  p99 {v['p99']:.2f}s  (n={v['n']})")


if __name__ == "__main__":
    main()
