"""Storage migration of one running test guest, through the qemu driver: its disk (with
``--data`` MiB really written) moved between two directories on this host, back and forth,
and shared-nothing migration (disk and memory) between two drivers with separate disk dirs,
beside a plain live migration of the same guest over a shared disk, same run. Reports the
disk move's time, and QEMU's downtime and the whole step's wall time of both migrations.
Writes bench/results/storage.json."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvcluster.drivers.qemu import QemuDriver, QemuSettings
from hvcluster.drivers.runtime import kill_all, vm_dir
from hvcluster.guestimage.image import DEFAULT_CACHE, build_image
from hvcluster.guestimage.testguest import create_disk, guest_spec, heartbeats
from hvcluster.models.config import MigrationSettings
from hvcluster.models.vm import Disk, VMSpec

RESULTS = Path(__file__).parent / "results" / "storage.json"
SETTINGS = MigrationSettings()
NAME = "sto"
MIB = 1024 * 1024


def filled_disk(path: Path, size_mib: int, data_mib: int) -> Path:
    create_disk(path, size_mib=size_mib)
    # data past sector 0 (the guest's counter), so the mirror has something to copy
    command = f"write -P 0xab 1M {data_mib}M"
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(path)], check=True, stdout=subprocess.DEVNULL
    )
    return path


async def booted(driver: QemuDriver, run_dir: Path) -> None:
    end = time.monotonic() + 90
    while not heartbeats(vm_dir(run_dir, NAME) / "serial.log"):
        if time.monotonic() > end:
            raise SystemExit("the guest did not boot in 90 s")
        await asyncio.sleep(0.2)


async def moves(
    driver: QemuDriver, dirs: list[Path], rounds: int
) -> tuple[list[dict[str, float]], Path]:
    """The disk moved between the two dirs ``rounds`` times; the file it is on at the end."""
    out, now = [], Path()
    for i in range(rounds):
        dest = Disk(path=str(dirs[(i + 1) % 2] / f"disk-{i + 1}.qcow2"))
        t0 = time.monotonic()
        result = await driver.move_disk(NAME, 0, dest)
        out.append({"move_ms": result.total_ms, "wall_ms": (time.monotonic() - t0) * 1000})
        await asyncio.to_thread(Path(result.old_path).unlink)
        now = Path(result.new_path)
    return out, now


async def migrations(
    a: QemuDriver, b: QemuDriver, spec: VMSpec, dirs: list[Path], rounds: int
) -> list[dict[str, Any]]:
    """Each round: shared-nothing to the other driver (the disk into its dir), then a plain
    live migration back over that same file (one machine: both see it)."""
    out: list[dict[str, Any]] = []
    epoch, holder, other, side = 1, a, b, 1
    for i in range(rounds):
        target = spec.model_copy(update={"disks": (Disk(path=str(dirs[side] / f"sn-{i}.qcow2")),)})
        epoch += 1
        t0 = time.monotonic()
        sizes = await holder.disk_sizes(NAME)
        incoming = await other.prepare_incoming_with_disks(target, epoch, "127.0.0.1", sizes)
        result = await holder.migrate_out(
            NAME, incoming.address, SETTINGS, disks_address=incoming.disks_address
        )
        await other.resume(NAME)
        wall = (time.monotonic() - t0) * 1000
        await holder.discard(NAME)
        await asyncio.to_thread(Path(spec.disks[0].path).unlink)
        out.append(row("shared-nothing", result.downtime_ms, result.total_ms, wall))
        spec, holder, other, side = target, other, holder, 1 - side
        epoch += 1
        t0 = time.monotonic()
        address = await other.prepare_incoming(spec, epoch, "127.0.0.1", SETTINGS)
        result = await holder.migrate_out(NAME, address, SETTINGS)
        await other.resume(NAME)
        wall = (time.monotonic() - t0) * 1000
        await holder.discard(NAME)
        out.append(row("live", result.downtime_ms, result.total_ms, wall))
        holder, other = other, holder
    return out


def row(kind: str, downtime: float, total: float, wall: float) -> dict[str, Any]:
    return {"kind": kind, "qemu_downtime_ms": downtime, "qemu_total_ms": total, "wall_ms": wall}


def median(rows: list[dict[str, Any]], key: str, kind: str | None = None) -> float:
    values = [r[key] for r in rows if kind is None or r.get("kind") == kind]
    return round(statistics.median(values), 1) if values else 0.0


async def main(args: argparse.Namespace) -> dict[str, Any]:
    image = build_image(DEFAULT_CACHE, log=lambda _: None)
    settings = QemuSettings(accelerator="tcg", cache_dir=DEFAULT_CACHE)
    with tempfile.TemporaryDirectory(prefix="hvc-bench-storage-") as tmp:
        root = Path(tmp)
        n1, n2 = root / "n1", root / "n2"
        dirs = {"n1": root / "disks-n1", "n2": root / "disks-n2"}
        for d in (n1, n2, *dirs.values()):
            d.mkdir()
        disk = filled_disk(dirs["n1"] / "disk-0.qcow2", args.size, args.data)
        spec = guest_spec(NAME, image, disk)
        a, b = QemuDriver(n1, settings), QemuDriver(n2, settings)
        try:
            await a.start(spec, 1)
            await booted(a, n1)
            local, now = await moves(a, [dirs["n1"], dirs["n2"]], args.rounds)
            spec = spec.model_copy(update={"disks": (Disk(path=str(now)),)})
            moved = await migrations(a, b, spec, [dirs["n1"], dirs["n2"]], args.rounds)
        finally:
            await a.close()
            await b.close()
            for d in (n1, n2):
                kill_all(d)
    return {
        "disk_mib": args.size,
        "data_mib": args.data,
        "memory_mib": 128,
        "rounds": args.rounds,
        "local_move": local,
        "migrations": moved,
        "median": {
            "local_move_ms": median(local, "move_ms"),
            "shared_nothing_downtime_ms": median(moved, "qemu_downtime_ms", "shared-nothing"),
            "shared_nothing_wall_ms": median(moved, "wall_ms", "shared-nothing"),
            "live_downtime_ms": median(moved, "qemu_downtime_ms", "live"),
            "live_wall_ms": median(moved, "wall_ms", "live"),
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256, help="disk size, MiB")
    parser.add_argument("--data", type=int, default=64, help="MiB of data on it")
    parser.add_argument("--rounds", type=int, default=3)
    result = asyncio.run(main(parser.parse_args()))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    m = result["median"]
    print(
        f"storage, {result['disk_mib']} MiB disk with {result['data_mib']} MiB data, "
        f"128 MiB TCG guest, {result['rounds']} rounds (medians):\n"
        f"  local disk move        {m['local_move_ms']:8.1f} ms\n"
        f"  shared-nothing migrate {m['shared_nothing_wall_ms']:8.1f} ms wall, "
        f"QEMU downtime {m['shared_nothing_downtime_ms']:.1f} ms\n"
        f"  plain live migrate     {m['live_wall_ms']:8.1f} ms wall, "
        f"QEMU downtime {m['live_downtime_ms']:.1f} ms\n"
        f"written to {RESULTS}"
    )
