"""One loaded guest moved back and forth many times, hvcluster's path and raw QMP's taking
turns: a paired comparison of their guest-visible downtime (QEMU's downtime, then the switch to
the target) and total time. bench/migration_load.py boots a guest per cell and moves it once
per path; QEMU's downtime varies from 0 to the downtime limit with where the guest's writer
is when the last pass falls, so one or two samples per cell cannot tell a small difference
from that noise. Here every round moves the same guest once by each path (the order flips each
round), so both see the same guest, the same writer, the same host.

The two paths are migration_load's: the qemu driver's ``prepare_incoming`` / ``migrate_out``
with the target resumed from the completion hook (as the agents do), and raw QMP to a target
QEMU started with ``-incoming``. The old source is killed after each move. Also measured: the
CPU this process used during each move (the drivers' own cost, next to QEMU's). ``--aa`` runs
raw QMP against itself (paths ``raw-a``, ``raw-b``): how far apart two identical paths come
out on this machine, the yardstick for the difference hvcluster's path shows. The agents'
placement flip adds one etcd commit to hvcluster's path (bench/store.py: p50 ~0.6 ms).

Writes bench/results/migration_pingpong.json and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvcluster.drivers.qemu import QemuDriver, QemuSettings
from hvcluster.drivers.runtime import kill_all, vm_dir
from hvcluster.guestimage.image import DEFAULT_CACHE, build_image
from hvcluster.guestimage.testguest import create_disk, guest_spec, heartbeats
from hvcluster.models.config import MigrationSettings
from migration_load import NAME, SET_MIB, WARM_S, hvc_path, raw_path, visible

RESULTS = Path(__file__).parent / "results" / "migration_pingpong.json"
SETTLE_S = 2.5  # between moves: the writer catches up on its new host


def _cpu_s() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


async def move(
    path: str, holder: Path, to: Path, spec: Any, settings: MigrationSettings, epoch: int
) -> dict[str, Any]:
    """One move of the guest in ``holder`` to ``to`` by ``path``; the source is killed."""
    qemu = QemuSettings(accelerator="tcg")
    cpu, began = _cpu_s(), time.monotonic()
    if not path.startswith("raw"):
        src, dst = QemuDriver(holder, qemu), QemuDriver(to, qemu)
        await src.attach()
        try:
            out = await hvc_path(src, dst, spec, settings, epoch)
        finally:
            await src.close()
            await dst.close()
    else:
        out, _ = await raw_path(vm_dir(holder, NAME) / "qmp.sock", spec, to, settings, epoch)
    out["cpu_pct"] = round(100 * (_cpu_s() - cpu) / (time.monotonic() - began), 1)
    if not out["converged"]:
        raise RuntimeError(f"{path} did not converge: {out}")
    kill_all(holder)
    return {"path": path, **out}


def summary(moves: list[dict[str, Any]], paths: tuple[str, str], seed: int = 1) -> dict[str, Any]:
    """Medians per path, the paired difference (the first path's minus the second's of the
    same round) and a bootstrap 95 % interval of the difference of the medians."""
    by = {p: [m for m in moves if m["path"] == p] for p in paths}
    hvc, raw = ([visible(m) for m in by[p]] for p in paths)
    paired = [h - r for h, r in zip(hvc, raw, strict=False)]
    rng = random.Random(seed)
    boot = sorted(
        statistics.median(rng.choices(hvc, k=len(hvc)))
        - statistics.median(rng.choices(raw, k=len(raw)))
        for _ in range(4000)
    )
    return {
        "moves_per_path": len(hvc),
        "downtime_ms": {p: statistics.median([visible(m) for m in by[p]]) for p in by},
        "qemu_downtime_ms": {p: statistics.median(m["downtime_ms"] for m in by[p]) for p in by},
        "switch_ms": {p: statistics.median(m["switch_ms"] for m in by[p]) for p in by},
        "total_ms": {p: statistics.median(m["total_ms"] for m in by[p]) for p in by},
        "cpu_pct": {p: statistics.median(m["cpu_pct"] for m in by[p]) for p in by},
        "paired_diff_ms": statistics.median(paired),
        "paired_first_higher": sum(d > 0 for d in paired),
        "diff_of_medians_ci95_ms": [boot[int(0.025 * len(boot))], boot[int(0.975 * len(boot))]],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1024, help="MiB")
    parser.add_argument("--rate", type=int, default=20, help="MiB/s the guest dirties")
    parser.add_argument("--rounds", type=int, default=15, help="moves per path")
    parser.add_argument("--aa", action="store_true", help="raw QMP against itself")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    image = build_image(DEFAULT_CACHE, log=lambda _: None)
    settings = MigrationSettings()
    a, b = ("raw-a", "raw-b") if args.aa else ("hvcluster", "raw")
    out = args.out or RESULTS.with_stem(RESULTS.stem + ("_aa" if args.aa else ""))
    moves: list[dict[str, Any]] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hvc-bench-pingpong-") as tmp:
        work = Path(tmp)
        spec = guest_spec(
            NAME, image, create_disk(work / "disk.qcow2"), args.size,
            dirty_mib_s=args.rate, dirty_set_mib=SET_MIB,
        )  # fmt: skip
        holder = work / "h0"
        try:
            first = QemuDriver(holder, QemuSettings(accelerator="tcg"))
            await first.start(spec, 1)
            for _ in range(1200):
                if heartbeats(vm_dir(holder, NAME) / "serial.log"):
                    break
                await asyncio.sleep(0.1)
            await first.close()
            await asyncio.sleep(WARM_S)
            for i in range(2 * args.rounds):
                paths = (a, b) if (i // 2) % 2 == 0 else (b, a)
                to = work / f"h{i + 1}"
                moves.append(await move(paths[i % 2], holder, to, spec, settings, i + 2))
                holder = to
                m = moves[-1]
                print(
                    f"{m['path']:9s} downtime {m['downtime_ms']:5.0f} ms + switch"
                    f" {m['switch_ms']:5.1f} ms  total {m['total_ms']:6.0f} ms"
                    f"  this process {m['cpu_pct']:4.1f} % CPU",
                    flush=True,
                )
                await asyncio.sleep(SETTLE_S)
        finally:
            for d in work.iterdir():  # noqa: ASYNC240
                if d.is_dir():
                    kill_all(d)
    s = summary(moves, (a, b))
    result = {
        "memory_mib": args.size,
        "dirty_mib_s": args.rate,
        "settings": settings.model_dump(mode="json"),
        "wall_s": round(time.monotonic() - began, 1),
        "moves": moves,
        "summary": s,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    lo, hi = s["diff_of_medians_ci95_ms"]
    down, total, cpu = s["downtime_ms"], s["total_ms"], s["cpu_pct"]
    print(
        f"{s['moves_per_path']} moves per path, {args.size} MiB dirtying {args.rate} MiB/s\n"
        f"guest-visible downtime median: {a} {down[a]:.1f} ms, {b} {down[b]:.1f} ms;"
        f" paired difference {s['paired_diff_ms']:+.1f} ms ({a} higher in"
        f" {s['paired_first_higher']} of {s['moves_per_path']}); difference of medians"
        f" 95 % CI [{lo:+.1f}, {hi:+.1f}] ms\n"
        f"total median: {a} {total[a]:.0f} ms, {b} {total[b]:.0f} ms; this process's CPU"
        f" during a move: {a} {cpu[a]:.1f} %, {b} {cpu[b]:.1f} %\n"
        f"written {out}"
    )


if __name__ == "__main__":
    asyncio.run(main())
