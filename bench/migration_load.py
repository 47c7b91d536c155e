"""Live migration of a loaded guest: hvcluster's migration against raw QMP with the same
settings, in the same run. For each guest size (1, 2, 4 GiB) and dirty rate (0, 20, 80 MiB/s,
the test guest's memory writer over a working set, see the test guest's init), one guest boots
with the qemu driver on "n1" and is migrated to "n2" by hvcluster's migration code (the qemu
driver's ``prepare_incoming`` / ``migrate_out``, the target resumed from the completion hook
as the agents do: at completion, or when postcopy starts; a precopy that does not converge
within ``--timeout`` is cancelled). The same guest, still running and still dirtying, is then
handed to raw QMP (the driver lets go) and migrated by hand to a raw target QEMU started with
``-incoming``: the same capabilities and parameters (made by the driver's own functions, on
both ends), ``migrate``, the source's MIGRATION event, ``cont``, the same timeout.

The second path moves a guest that has moved once already (its memory touched on a host
that has it all), so the order may favour one path: ``--first`` says which goes first
(``alternate``, the default: hvcluster in even cells, raw in odd ones; ``both``: each size
and rate twice, one order each; each cell records its ``first``). Raw first, its target
QEMU runs in a driver's run dir with the driver's ``spec.json``, so a driver attaches it (as
an agent restarted does) and hvcluster's path moves it on to a third driver.

Measures per path: ``downtime_ms`` (QEMU's, of the transfer), ``switch_ms`` (from the moment
the end was heard until the target's ``cont`` returned: guest-visible downtime is the sum),
``total_ms`` (QEMU's), ``passes`` (QEMU's dirty-sync count), ``converged``, the dirty rate QEMU
last reckoned. This is the driver path: the agents' placement flip adds one etcd commit (see
bench/migration.py for that part, on an idle guest).

Writes bench/results/migration_load.json and prints a table. It is heavy (guests of up to
4 GiB under TCG): run it on a quiet machine (load < 4); ``--sizes``/``--rates`` run a part.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qemu.qmp import EventListener, QMPClient, QMPError

from hvcluster.drivers.errors import MigrationFailed
from hvcluster.drivers.qemu import QemuDriver, QemuSettings
from hvcluster.drivers.qemu.cmdline import Launch, qemu_argv
from hvcluster.drivers.qemu.migration import capabilities, parameters, progress_of
from hvcluster.drivers.qemu.vm import free_port
from hvcluster.drivers.runtime import kill_all, read_int, vm_dir, write_json
from hvcluster.guestimage.image import DEFAULT_CACHE, build_image
from hvcluster.guestimage.testguest import create_disk, guest_spec, heartbeats
from hvcluster.models.config import MigrationSettings
from hvcluster.models.migration import Progress
from hvcluster.models.vm import VMSpec

RESULTS = Path(__file__).parent / "results" / "migration_load.json"
NAME = "load"
SET_MIB = 512  # the writer's working set (every size has room for it)
WARM_S = 5.0  # the writer runs this long before the migration starts


async def hvc_path(
    src: QemuDriver, dst: QemuDriver, spec: VMSpec, settings: MigrationSettings, epoch: int
) -> dict[str, Any]:
    """hvcluster's migration code (the qemu driver), the target resumed from its hook."""
    address = await dst.prepare_incoming(spec, epoch, "127.0.0.1", settings)
    seen: list[Progress] = []
    switch: dict[str, float] = {}

    async def switched(at: float) -> None:
        await dst.resume(spec.name)
        switch["ms"] = (time.time() - at) * 1000

    try:
        result = await src.migrate_out(spec.name, address, settings, seen.append, switched)
    except MigrationFailed as e:
        await dst.discard(spec.name)
        last = seen[-1] if seen else Progress()
        return {"converged": False, "reason": str(e), **_load(last)}
    await src.discard(spec.name)
    return {
        "converged": True,
        "downtime_ms": result.downtime_ms,
        "switch_ms": switch.get("ms", 0.0),
        "total_ms": result.total_ms,
        **_load(result.progress, seen),
    }


def _load(last: Progress, seen: list[Progress] | None = None) -> dict[str, Any]:
    rates = [p.dirty_rate_mib_s for p in (seen or [last])]
    return {
        "passes": last.passes,
        "dirty_rate_mib_s": max(rates),
        "postcopy": last.postcopy,
        "max_throttle_pct": max(p.cpu_throttle_pct for p in (seen or [last])),
    }


async def raw_path(
    sock: Path, spec: VMSpec, run_dir: Path, settings: MigrationSettings, epoch: int
) -> tuple[dict[str, Any], int]:
    """The same migration by hand with raw QMP (and the target QEMU's pid), to a QEMU in
    ``run_dir`` as a driver's would be there (its ``spec.json`` says ``epoch``)."""
    d = vm_dir(run_dir, NAME)
    d.mkdir(parents=True)
    record = {"spec": spec.model_dump(mode="json"), "epoch": epoch, "started": time.time()}
    write_json(d / "spec.json", record)
    port = free_port("127.0.0.1")
    argv = qemu_argv(spec, d, run_dir, Launch("tcg", paused=True, incoming=True), QemuSettings())
    argv[argv.index("defer")] = f"tcp:127.0.0.1:{port}"
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL)
    if await proc.wait() != 0:
        raise RuntimeError(f"raw target QEMU did not start: {(d / 'qemu.log').read_text()}")
    dst_pid = read_int(d / "pid")
    assert dst_pid is not None
    src, dst = QMPClient("raw-src"), QMPClient("raw-dst")
    await src.connect(str(sock))
    await dst.connect(str(d / "qmp.sock"))
    events = EventListener(("MIGRATION",))
    src.register_listener(events)
    for client in (dst, src):
        await client.execute("migrate-set-capabilities", {"capabilities": capabilities(settings)})
        await client.execute("migrate-set-parameters", parameters(settings))
    await src.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
    deadline = time.monotonic() + settings.timeout_s
    last = Progress()
    out: dict[str, Any] = {}
    while True:
        try:
            event: Any = await asyncio.wait_for(events.get(), 0.5)
            status = event.get("data", {}).get("status")
        except TimeoutError:
            info: Any = await src.execute("query-migrate")
            status = info.get("status")
            if status == "active":
                last = progress_of(info)
                if time.monotonic() > deadline:
                    await src.execute("migrate_cancel")
                    out = {"converged": False, "reason": "timeout", **_load(last)}
                    break
        if status == "completed":
            heard = time.time()
            await dst.execute("cont")
            switch_ms = (time.time() - heard) * 1000
            info = await src.execute("query-migrate")
            while not info.get("total-time"):
                await asyncio.sleep(0.01)
                info = await src.execute("query-migrate")
            done = progress_of(info)
            out = {
                "converged": True,
                "downtime_ms": float(info["downtime"]),
                "switch_ms": switch_ms,
                "total_ms": float(info["total-time"]),
                "passes": done.passes,
                "dirty_rate_mib_s": max(last.dirty_rate_mib_s, done.dirty_rate_mib_s),
                "postcopy": False,
                "max_throttle_pct": last.cpu_throttle_pct,
            }
            break
        if status in ("failed", "cancelled"):
            out = {"converged": False, "reason": str(status), **_load(last)}
            break
    for client in (src, dst):
        with contextlib.suppress(EOFError, QMPError):
            await client.disconnect()
    return out, dst_pid


async def cell(
    image: Any, cache: Path, memory: int, rate: int, settings: MigrationSettings, first: str
) -> dict[str, Any]:
    """One guest of ``memory`` MiB dirtying ``rate`` MiB/s: both paths, ``first`` first."""
    qemu = QemuSettings(accelerator="tcg", cache_dir=cache)
    with tempfile.TemporaryDirectory(prefix="hvc-bench-load-") as tmp:
        work = Path(tmp)
        disk = create_disk(work / "disk.qcow2")
        spec = guest_spec(NAME, image, disk, memory, dirty_mib_s=rate, dirty_set_mib=SET_MIB)
        drivers = [QemuDriver(work / "n1", qemu)]
        raw_pid: int | None = None
        try:
            await drivers[0].start(spec, 1)
            serial = vm_dir(work / "n1", NAME) / "serial.log"
            for _ in range(1200):
                if heartbeats(serial):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(WARM_S)
            measured = await dirty_rate(drivers[0])
            if first == "hvcluster":
                await asyncio.sleep(WARM_S / 2)  # as _let_go lets the raw path's guest settle
                drivers.append(QemuDriver(work / "n2", qemu))
                hvc = await hvc_path(drivers[0], drivers[1], spec, settings, 2)
                holder = drivers[1 if hvc["converged"] else 0].run_dir
                await _let_go(drivers)
                raw, raw_pid = await raw_path(_sock(holder), spec, work / "raw", settings, 3)
            else:
                await _let_go(drivers)
                raw, _ = await raw_path(_sock(work / "n1"), spec, work / "n2", settings, 2)
                holder = work / ("n2" if raw["converged"] else "n1")
                if raw["converged"]:  # the source's copy, paused for good (as discard does)
                    kill_all(work / "n1")
                drivers = [QemuDriver(holder, qemu), QemuDriver(work / "n3", qemu)]
                await drivers[0].attach()  # (its QMP socket is free: raw_path let go)
                await asyncio.sleep(WARM_S / 2)
                hvc = await hvc_path(drivers[0], drivers[1], spec, settings, 3)
                await _let_go(drivers)
        finally:
            if raw_pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(raw_pid, signal.SIGKILL)
            for run_dir in work.iterdir():  # noqa: ASYNC240
                if run_dir.is_dir():
                    kill_all(run_dir)
    return {
        "memory_mib": memory,
        "dirty_mib_s": rate,
        "dirty_measured_mib_s": measured,
        "first": first,
        "hvcluster": hvc,
        "raw": raw,
    }


def _sock(run_dir: Path) -> Path:
    return vm_dir(run_dir, NAME) / "qmp.sock"


async def _let_go(drivers: list[QemuDriver]) -> None:
    """The drivers close (their QEMUs run on); the guest settles (its writer catches up)."""
    for driver in drivers:
        await driver.close()
    await asyncio.sleep(WARM_S / 2)


async def dirty_rate(driver: QemuDriver, calc_s: int = 2) -> float:
    """The guest's dirty rate as QEMU measures it outside any migration (``calc-dirty-rate``,
    sampling 4096 pages a GiB), MiB/s: what the memory writer really does."""
    monitor = driver.vms.qmp(driver.vms.get(NAME))
    await monitor.execute("calc-dirty-rate", {"calc-time": calc_s, "sample-pages": 4096})
    await asyncio.sleep(calc_s)
    for _ in range(100):
        info = await monitor.execute("query-dirty-rate")
        if info.get("status") == "measured":
            return float(info.get("dirty-rate", 0))
        await asyncio.sleep(0.1)
    return -1.0


def row(c: dict[str, Any], path: str) -> str:
    r = c[path]
    if not r["converged"]:
        return (
            f"{c['memory_mib'] // 1024:>3} GiB {c['dirty_mib_s']:>3} MiB/s {path:9s}"
            f" NOT CONVERGED after {r['passes']} passes (dirty {r['dirty_rate_mib_s']:.0f} MiB/s)"
        )
    return (
        f"{c['memory_mib'] // 1024:>3} GiB {c['dirty_mib_s']:>3} MiB/s {path:9s}"
        f" downtime {r['downtime_ms']:6.0f} ms + switch {r['switch_ms']:5.1f} ms"
        f"  total {r['total_ms']:7.0f} ms  passes {r['passes']:3d}"
        f"  dirty seen {r['dirty_rate_mib_s']:5.1f} MiB/s  throttle {r['max_throttle_pct']:2d} %"
    )


def visible(r: dict[str, Any]) -> float:
    """Guest-visible downtime of one path: QEMU's downtime, then the switch to the target."""
    return float(r["downtime_ms"]) + float(r["switch_ms"])


def summary(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size and dirty rate, over its samples (both orders): whether every path
    converged, the median guest-visible downtime of each, the median of hvcluster's minus
    raw's (paired, the same guest in the same cell) and the geometric mean of the totals'
    ratio."""
    out = []
    for key in sorted({(c["memory_mib"], c["dirty_mib_s"]) for c in cells}):
        mine = [c for c in cells if (c["memory_mib"], c["dirty_mib_s"]) == key]
        both = [c for c in mine if c["hvcluster"]["converged"] and c["raw"]["converged"]]
        ratios = [c["hvcluster"]["total_ms"] / c["raw"]["total_ms"] for c in both]
        out.append({
            "memory_mib": key[0],
            "dirty_mib_s": key[1],
            "samples": len(mine),
            "hvcluster_converged": sum(c["hvcluster"]["converged"] for c in mine),
            "raw_converged": sum(c["raw"]["converged"] for c in mine),
            "hvcluster_downtime_ms": _median([visible(c["hvcluster"]) for c in both]),
            "raw_downtime_ms": _median([visible(c["raw"]) for c in both]),
            "downtime_diff_ms": _median(
                [visible(c["hvcluster"]) - visible(c["raw"]) for c in both]
            ),
            "total_ratio": math.exp(statistics.fmean(map(math.log, ratios))) if ratios else None,
        })  # fmt: skip
    return out


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["GiB MiB/s  n  conv hvc/raw  downtime ms hvc / raw (median)  diff  total hvc/raw"]
    for r in rows:
        conv = f"{r['hvcluster_converged']}/{r['raw_converged']}"
        if r["total_ratio"] is None:
            lines.append(
                f"{r['memory_mib'] // 1024:>3} {r['dirty_mib_s']:>5} {r['samples']:>2}  {conv}"
            )
            continue
        lines.append(
            f"{r['memory_mib'] // 1024:>3} {r['dirty_mib_s']:>5} {r['samples']:>2}  {conv:>12}"
            f"  {r['hvcluster_downtime_ms']:8.0f} / {r['raw_downtime_ms']:<8.0f}"
            f"            {r['downtime_diff_ms']:+6.0f}  {r['total_ratio']:.2f}x"
        )
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="MiB")
    parser.add_argument("--rates", type=int, nargs="+", default=[0, 20, 80], help="MiB/s")
    parser.add_argument("--timeout", type=float, default=120.0, help="per migration, s")
    parser.add_argument(
        "--first", choices=("alternate", "both", "hvcluster", "raw"), default="alternate",
        help="which path migrates the guest first (alternate: by cell; both: each order)",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, help="samples of each cell (and order)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--cache", type=Path, default=Path(os.environ.get("HVC_CACHE", DEFAULT_CACHE))
    )
    args = parser.parse_args()
    image = build_image(args.cache, log=lambda _: None)
    settings = MigrationSettings(timeout_s=args.timeout)  # the cluster's defaults otherwise
    cells: list[dict[str, Any]] = []
    started = time.time()
    grid = [(m, r) for _ in range(args.repeat) for m in args.sizes for r in args.rates]
    for memory, rate in grid:  # (repeats go round the whole grid: drift hits every cell)
        orders = {
            "alternate": [("hvcluster", "raw")[len(cells) % 2]],
            "both": ["hvcluster", "raw"],
        }.get(args.first, [args.first])
        for first in orders:
            load = os.getloadavg()[0]
            c = await cell(image, args.cache, memory, rate, settings, first)
            c["load_before"], c["load_after"] = load, os.getloadavg()[0]
            cells.append(c)
            print(f"  (QEMU measured the guest dirtying {c['dirty_measured_mib_s']:.0f} MiB/s)")
            for path in ("hvcluster", "raw") if first == "hvcluster" else ("raw", "hvcluster"):
                print(row(c, path), flush=True)
            results = {  # written after each cell: a run cut short keeps what it measured
                "settings": settings.model_dump(),
                "working_set_mib": SET_MIB,
                "first": args.first,
                "wall_s": time.time() - started,
                "cells": cells,
                "summary": summary(cells),
            }
            args.out.parent.mkdir(exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    for line in summary_lines(summary(cells)):
        print(line)
    print(f"written {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
