"""Live migration through hvcluster against the same migration done by hand with raw QMP, in
the same run: a two-node qemu lab runs one test guest and moves it back and forth through the
API (``POST /vms/NAME/move``, then the record polled until done); between those rounds a
second, identical guest outside the cluster is migrated by hand (see ``migrate_raw.py``:
target QEMU started with ``-incoming``, ``migrate``, ``cont``). Both guests run throughout,
so both paths see the same load.

Measures, per round:

- ``qemu_downtime_ms``: QEMU's own downtime of the transfer (both paths);
- ``downtime_ms``: what the guest sees, paused on the source until running on the target,
  measured the same way on both paths: QEMU's downtime + from the moment the source's
  MIGRATION ``completed`` event was heard until the target's ``cont`` returned (raw: by
  this script; hvcluster: the record's ``downtime_ms``, i.e. the source agent flips the
  placement and the target agent resumes from its watch event); ``switch_ms`` is that
  second part alone;
- ``total_ms``: raw = target QEMU start + migrate + cont; hvcluster = the record's
  ``total_ms`` (request stored until the target resumed); ``wall_ms``: what the client
  waited, POST to the record done with its times (hvcluster only).

Both paths use the same QEMU migration settings (``SETTINGS`` of migrate_raw.py: the
cluster's defaults, max-bandwidth, downtime-limit, auto-converge; set on both ends with the
driver's own functions), and both hear the end from QMP events, not polling. The client
polls the record every 200 ms (``wall_ms`` is that coarse) so that it does not load the
agents during a migration (the raw rounds have no such load either).

Writes bench/results/migration.json and prints medians and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hvcluster.drivers.qemu import QemuDriver, QemuSettings
from hvcluster.drivers.runtime import kill_all, read_int, vm_dir
from hvcluster.guestimage.image import DEFAULT_CACHE, require_image
from hvcluster.guestimage.testguest import create_disk, guest_spec, heartbeats, read_counter
from hvcluster.lab import cluster, faults
from hvcluster.models.config import ClusterConfig
from hvcluster.models.vm import VMSpec
from migrate_raw import SETTINGS, raw_round

RESULTS = Path(__file__).parent / "results" / "migration.json"
# The lab's admin token, once the lab is up (every request sends it).
HEADERS: dict[str, str] = {}
VM = "bench-mig"
RAW = "mig"  # migrate_raw's guest name
POLL_S = 0.2  # the client's look at the record: rarely, so that it does not load the agents


def wait(pred: Any, timeout: float, what: str, every: float = 0.05) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(httpx.HTTPError, KeyError):
            value = pred()
            if value:
                return value
        time.sleep(every)
    raise RuntimeError(f"timed out waiting for {what}")


def hvc_round(api: str, to: str) -> dict[str, float]:
    t0 = time.monotonic()
    r = httpx.post(
        f"{api}/api/v1/vms/{VM}/move", json={"to": to, "kind": "live"}, headers=HEADERS, timeout=10
    )
    r.raise_for_status()
    mid = r.json()["id"]

    def done() -> dict[str, Any] | None:
        m: dict[str, Any] = httpx.get(
            f"{api}/api/v1/migrations/{mid}", headers=HEADERS, timeout=5
        ).json()
        if m["state"] in ("failed", "cancelled"):
            raise RuntimeError(f"migration {m['state']}: {m['reason']}")
        return m if m["state"] == "done" and m["downtime_ms"] is not None else None

    try:
        m = wait(done, 120, f"migration {mid}", every=POLL_S)
    except RuntimeError:
        print(
            httpx.get(f"{api}/api/v1/migrations/{mid}", headers=HEADERS, timeout=5).json(),
            file=sys.stderr,
        )
        raise
    wall = (time.monotonic() - t0) * 1000

    def running() -> bool:
        vm = httpx.get(f"{api}/api/v1/vms/{VM}", headers=HEADERS, timeout=5).json()
        return bool(vm["state"] == "running" and vm["node"] == to)

    wait(running, 30, f"{VM} running on {to}")
    return {
        "qemu_downtime_ms": float(m["transfer_downtime_ms"]),
        "qemu_total_ms": float(m["transfer_ms"]),
        "downtime_ms": float(m["downtime_ms"]),
        "switch_ms": float(m["downtime_ms"]) - float(m["transfer_downtime_ms"]),
        "total_ms": float(m["total_ms"]),
        "wall_ms": wall,
    }


def drain_time(driver: str, count: int, cache: Path, image: Any) -> dict[str, Any]:
    """Seconds to drain a node running ``count`` VMs in a 3-node lab of ``driver``: from
    ``POST /nodes/n1/drain`` until n1 is paused with every VM running elsewhere."""
    with tempfile.TemporaryDirectory(prefix=f"hvc-bench-drain-{driver}-") as tmp:
        lab_dir = Path(tmp) / "lab"
        try:
            state = cluster.up(3, driver, lab_dir, cache, ClusterConfig(), log=lambda _: None)  # type: ignore[arg-type]
            HEADERS.update(state.auth())
            for node in state.nodes:  # room for every VM on one node (the lab host has 2 CPUs)
                with open(node.config, "a") as f:
                    f.write("cpus = 16\n")
                faults.fault(state, "kill-agent", node.name, record=False)  # setup, not a fault
                state = cluster.start_node(state, node.name)  # saves the new pids
            api = state.api_url(state.nodes[1])
            os.environ["SSL_CERT_FILE"] = state.ca  # httpx checks the lab's https APIs with it

            def capacity_seen() -> bool:
                nodes = httpx.get(f"{api}/api/v1/nodes", headers=HEADERS, timeout=5).json()["nodes"]
                return all(n["node"]["capacity"]["cpus"] == 16 and n["alive"] for n in nodes)

            wait(capacity_seen, 60, "agents back with 16 CPUs", 0.2)
            names = [f"d{i}" for i in range(count)]
            for name in names:
                spec: dict[str, Any] = {"name": name, "memory_mib": 128}
                if driver == "qemu":
                    disk = create_disk(Path(state.shared_dir) / f"{name}.qcow2")
                    spec = guest_spec(name, image, disk, memory_mib=128).model_dump(mode="json")
                spec["ha"] = {"preferred_owners": ["n1"]}
                httpx.post(
                    f"{api}/api/v1/vms", json=spec, headers=HEADERS, timeout=10
                ).raise_for_status()

            def all_on(nodes: tuple[str, ...]) -> bool:
                vms = httpx.get(f"{api}/api/v1/vms", headers=HEADERS, timeout=5).json()["vms"]
                ours = [v for v in vms if v["name"] in names]
                return len(ours) == count and all(
                    v["state"] == "running" and v["node"] in nodes for v in ours
                )

            wait(lambda: all_on(("n1",)), 180, f"{count} {driver} VMs running on n1", 0.2)
            time.sleep(2)
            t0 = time.monotonic()
            httpx.post(
                f"{api}/api/v1/nodes/n1/drain", headers=HEADERS, timeout=10
            ).raise_for_status()

            def paused() -> bool:
                n = httpx.get(f"{api}/api/v1/nodes/n1", headers=HEADERS, timeout=5).json()
                return bool(n["admin_state"] == "paused")

            wait(paused, 300, "n1 drained", 0.05)
            seconds = time.monotonic() - t0
            wait(lambda: all_on(("n2", "n3")), 30, "every VM running elsewhere", 0.1)
            migrations = httpx.get(f"{api}/api/v1/migrations", headers=HEADERS, timeout=5).json()[
                "migrations"
            ]
            downtimes = [m["downtime_ms"] for m in migrations if m["downtime_ms"] is not None]
            return {
                "driver": driver,
                "vms": count,
                "max_parallel_per_node": ClusterConfig().migration.max_parallel_per_node,
                "drain_s": seconds,
                "migrations": len(migrations),
                "median_downtime_ms": statistics.median(downtimes) if downtimes else None,
            }
        finally:
            cluster.down(lab_dir, log=lambda _: None)


def med(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


async def start_raw_guest(work: Path, spec: VMSpec, settings: QemuSettings) -> tuple[Path, int]:
    """Start the raw guest with the driver, wait for it to boot, then let go of it."""
    starter = QemuDriver(work / "raw-n1", settings)
    await starter.start(spec, 1)
    raw_serial = vm_dir(work / "raw-n1", RAW) / "serial.log"
    for _ in range(1200):
        if await asyncio.to_thread(heartbeats, raw_serial):
            break
        await asyncio.sleep(0.1)
    pid = read_int(vm_dir(work / "raw-n1", RAW) / "pid")
    assert pid is not None
    await starter.close()
    return vm_dir(work / "raw-n1", RAW) / "qmp.sock", pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--no-drain", action="store_true", help="skip the drain timings")
    parser.add_argument(
        "--cache", type=Path, default=Path(os.environ.get("HVC_CACHE", DEFAULT_CACHE))
    )
    args = parser.parse_args()
    image = require_image(args.cache)
    config = ClusterConfig(migration=SETTINGS)  # the raw rounds use the very same settings
    with tempfile.TemporaryDirectory(prefix="hvc-bench-migration-") as tmp:
        work = Path(tmp)
        lab_dir = work / "lab"
        raw_pids: list[int] = []
        try:
            state = cluster.up(2, "qemu", lab_dir, args.cache, config, log=lambda _: None)
            HEADERS.update(state.auth())
            api = state.api_url(state.nodes[0])
            os.environ["SSL_CERT_FILE"] = state.ca
            disk = create_disk(Path(state.shared_dir) / f"{VM}.qcow2")
            spec = guest_spec(VM, image, disk, memory_mib=128).model_dump(mode="json")
            spec["ha"] = {"preferred_owners": ["n1"]}
            httpx.post(
                f"{api}/api/v1/vms", json=spec, headers=HEADERS, timeout=10
            ).raise_for_status()
            serial = Path(state.node("n1").run_dir) / "vms" / VM / "serial.log"
            wait(lambda: heartbeats(serial), 120, "the cluster guest's heartbeats", 0.2)

            settings = QemuSettings(accelerator="tcg", cache_dir=args.cache)
            raw_disk = create_disk(work / "raw.qcow2")
            raw_spec = guest_spec(RAW, image, raw_disk, memory_mib=128)
            sock, pid = asyncio.run(start_raw_guest(work, raw_spec, settings))
            raw_pids.append(pid)
            time.sleep(2)
            counters = {"cluster_start": read_counter(disk), "raw_start": read_counter(raw_disk)}

            hvc_samples, raw_samples = [], []
            targets = ["n2", "n1"]
            for i in range(args.rounds):
                hvc_samples.append(hvc_round(api, targets[i % 2]))
                time.sleep(0.5)
                sample, sock, pid = asyncio.run(raw_round(sock, pid, raw_spec, work, i))
                raw_pids.append(pid)
                sample["downtime_ms"] = sample["qemu_downtime_ms"] + sample["resume_ms"]
                sample["switch_ms"] = sample["resume_ms"]
                sample["total_ms"] = (
                    sample["prepare_ms"] + sample["migrate_call_ms"] + sample["resume_ms"]
                )
                raw_samples.append(sample)
                time.sleep(0.5)
            time.sleep(1)
            counters["cluster_end"] = read_counter(disk)
            counters["raw_end"] = read_counter(raw_disk)
            if os.environ.get("HVC_BENCH_KEEP"):  # the agents' logs, for their timestamps
                keep = Path(os.environ["HVC_BENCH_KEEP"])
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(lab_dir / "nodes", keep, ignore=shutil.ignore_patterns("*.sock"))
        except BaseException:
            keep = Path(os.environ.get("HVC_BENCH_KEEP", "/tmp/hvc-bench-migration-logs"))
            with contextlib.suppress(OSError):
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(lab_dir / "nodes", keep, ignore=shutil.ignore_patterns("*.sock"))
            print(f"lab logs kept in {keep}", file=sys.stderr)
            raise
        finally:
            for p in raw_pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            kill_all(work / "raw-n1")
            cluster.down(lab_dir, log=lambda _: None)
    drains = []
    if not args.no_drain:
        drains = [drain_time("sim", 8, args.cache, image), drain_time("qemu", 4, args.cache, image)]
    h, r = med(hvc_samples), med(raw_samples)
    results = {
        "rounds": args.rounds,
        "memory_mib": 128,
        "settings": config.migration.model_dump(),
        "settings_note": "the same QEMU migration settings on both paths, both ends",
        "hvcluster": {"samples": hvc_samples, "median": h},
        "raw": {"samples": raw_samples, "median": r},
        "ratio_downtime": h["downtime_ms"] / max(r["downtime_ms"], 1e-9),
        "ratio_qemu_downtime": h["qemu_downtime_ms"] / max(r["qemu_downtime_ms"], 1e-9),
        "total_minus_raw_ms": h["total_ms"] - r["total_ms"],
        "goal": "downtime <= 1.5x raw, total <= raw + 300 ms",
        "counters": counters,
        "drain": drains,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"128 MiB test guest, {args.rounds} rounds each, medians:")
    for label, m in (("hvcluster", h), ("raw QMP", r)):
        print(
            f"  {label:9s} downtime {m['downtime_ms']:7.1f} ms (QEMU {m['qemu_downtime_ms']:5.1f}"
            f" + switch {m['switch_ms']:5.1f})"
            f"  total {m['total_ms']:7.1f} ms (QEMU transfer {m['qemu_total_ms']:6.1f})"
        )
    print(
        f"  ratio downtime {results['ratio_downtime']:.2f}x (QEMU's: "
        f"{results['ratio_qemu_downtime']:.2f}x), total {results['total_minus_raw_ms']:+.0f} ms"
        f" vs raw; client wall (POST to done) {h['wall_ms']:.0f} ms"
    )
    print(f"  counters: {counters} (never reset)")
    for d in drains:
        print(
            f"  drain of a node with {d['vms']} {d['driver']} VMs (at most "
            f"{d['max_parallel_per_node']} at once): {d['drain_s']:.1f} s, "
            f"median downtime {d['median_downtime_ms'] or 0:.0f} ms"
        )
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
