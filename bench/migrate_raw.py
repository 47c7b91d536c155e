"""Live migration of one test guest over loopback: through the qemu driver's primitives, then
by hand with raw QMP (the same guest, same run, same settings: :data:`SETTINGS` on both
ends, capabilities and parameters made by the driver's own functions). QEMU's own downtime
and total time, and the wall time of the whole step. Writes bench/results/migrate_raw.json.

``raw_round`` is also bench/migration.py's baseline."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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

from hvcluster.drivers.qemu import QemuDriver, QemuSettings
from hvcluster.drivers.qemu.cmdline import Launch, qemu_argv
from hvcluster.drivers.qemu.migration import capabilities, parameters
from hvcluster.drivers.qemu.vm import free_port
from hvcluster.drivers.runtime import kill_all, pid_alive, read_int, vm_dir
from hvcluster.guestimage.image import DEFAULT_CACHE, build_image
from hvcluster.guestimage.testguest import create_disk, guest_spec, heartbeats, read_counter
from hvcluster.models.config import MigrationSettings
from hvcluster.models.vm import VMSpec

RESULTS = Path(__file__).parent / "results" / "migrate_raw.json"
SETTINGS = MigrationSettings()
NAME = "mig"


async def driver_round(
    src: QemuDriver, dst: QemuDriver, spec: VMSpec, epoch: int
) -> dict[str, float]:
    t0 = time.monotonic()
    address = await dst.prepare_incoming(spec, epoch, "127.0.0.1", SETTINGS)
    t1 = time.monotonic()
    result = await src.migrate_out(NAME, address, SETTINGS)
    t2 = time.monotonic()
    await dst.resume(NAME)
    t3 = time.monotonic()
    await src.discard(NAME)
    return {
        "qemu_downtime_ms": result.downtime_ms,
        "qemu_total_ms": result.total_ms,
        "prepare_ms": (t1 - t0) * 1000,
        "migrate_call_ms": (t2 - t1) * 1000,
        "resume_ms": (t3 - t2) * 1000,
    }


async def raw_round(
    src_sock: Path, src_pid: int, spec: VMSpec, work: Path, i: int
) -> tuple[dict[str, float], Path, int]:
    """Start a target QEMU by hand with -incoming tcp:..., migrate with raw QMP, cont, quit.

    The same settings as hvcluster's (:data:`SETTINGS` through the driver's own
    ``capabilities``/``parameters``, on both ends), and the same way of hearing the end: the
    source's MIGRATION event ``completed`` (``t2``, wall clock), then the target's own
    ``completed`` event, then ``cont``. Guest-visible downtime = QEMU's downtime + t2 until
    ``cont`` returned, exactly as hvcluster's record measures it."""
    d = work / f"raw-{i}" / "vms" / NAME
    d.mkdir(parents=True)
    port = free_port("127.0.0.1")
    argv = qemu_argv(spec, d, work, Launch("tcg", paused=True, incoming=True), QemuSettings())
    argv[argv.index("defer")] = f"tcp:127.0.0.1:{port}"
    t0 = time.time()
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL)
    if await proc.wait() != 0:
        raise RuntimeError(f"raw target QEMU did not start: {(d / 'qemu.log').read_text()}")
    dst_pid = read_int(d / "pid")
    assert dst_pid is not None
    src, dst = QMPClient("raw-src"), QMPClient("raw-dst")
    await src.connect(str(src_sock))
    await dst.connect(str(d / "qmp.sock"))
    src_events, dst_events = EventListener(("MIGRATION",)), EventListener(("MIGRATION",))
    src.register_listener(src_events)
    dst.register_listener(dst_events)
    for client in (dst, src):
        await client.execute("migrate-set-capabilities", {"capabilities": capabilities(SETTINGS)})
        await client.execute("migrate-set-parameters", parameters(SETTINGS))
    t1 = time.time()
    await src.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
    await _completed(src_events, "source")
    t2 = time.time()
    await _completed(dst_events, "target")
    await dst.execute("cont")
    t3 = time.time()
    info: Any = await src.execute("query-migrate")
    while not info.get("total-time"):
        await asyncio.sleep(0.01)
        info = await src.execute("query-migrate")
    for client, command in ((src, "quit"), (src, None), (dst, None)):
        with contextlib.suppress(EOFError, QMPError):  # the source hangs up as it quits
            await (client.execute(command) if command else client.disconnect())
    for _ in range(200):
        if not pid_alive(src_pid):
            break
        await asyncio.sleep(0.01)
    sample = {
        "qemu_downtime_ms": float(info["downtime"]),
        "qemu_total_ms": float(info["total-time"]),
        "prepare_ms": (t1 - t0) * 1000,
        "migrate_call_ms": (t2 - t1) * 1000,
        "resume_ms": (t3 - t2) * 1000,
    }
    return sample, d / "qmp.sock", dst_pid


async def _completed(events: EventListener, which: str) -> None:
    """Wait for the MIGRATION event saying completed (failed or cancelled: an error)."""
    while True:
        event = await asyncio.wait_for(events.get(), SETTINGS.timeout_s)
        status = event.get("data", {}).get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise RuntimeError(f"raw migration ({which}): {status}")


def summary(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memory", type=int, default=128, help="guest memory, MiB")
    parser.add_argument(
        "--cache", type=Path, default=Path(os.environ.get("HVC_CACHE", DEFAULT_CACHE))
    )
    args = parser.parse_args()
    image = build_image(args.cache, log=lambda _: None)
    settings = QemuSettings(accelerator="tcg", cache_dir=args.cache)
    with tempfile.TemporaryDirectory(prefix="hvc-bench-mig-") as tmp:
        work = Path(tmp)
        disk = create_disk(work / "disk.qcow2")
        spec = guest_spec(NAME, image, disk, memory_mib=args.memory)
        a, b = QemuDriver(work / "n1", settings), QemuDriver(work / "n2", settings)
        raw_pids: list[int] = []
        try:
            await a.start(spec, 1)
            serial = vm_dir(work / "n1", NAME) / "serial.log"
            for _ in range(1200):
                if heartbeats(serial):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(2)
            start_counter = read_counter(disk)
            driver_samples = []
            src, dst = a, b
            for i in range(args.rounds):
                driver_samples.append(await driver_round(src, dst, spec, 2 + i))
                src, dst = dst, src
                await asyncio.sleep(0.5)
            # Hand the same running guest over to raw QMP: the driver lets go, QEMU runs on.
            holder = src
            sock = vm_dir(holder.run_dir, NAME) / "qmp.sock"
            pid = read_int(vm_dir(holder.run_dir, NAME) / "pid")
            assert pid is not None
            await a.close()
            await b.close()
            raw_samples = []
            for i in range(args.rounds):
                sample, sock, pid = await raw_round(sock, pid, spec, work, i)
                raw_pids.append(pid)
                raw_samples.append(sample)
                await asyncio.sleep(0.5)
            await asyncio.sleep(1)
            end_counter = read_counter(disk)
        finally:
            for pid in raw_pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            # n1, n2 and every raw-<i>, even a half-made one (cleanup: blocking is fine here)
            for run_dir in work.iterdir():  # noqa: ASYNC240
                if run_dir.is_dir():
                    kill_all(run_dir)
    d, r = summary(driver_samples), summary(raw_samples)
    results = {
        "memory_mib": args.memory,
        "rounds": args.rounds,
        "settings": SETTINGS.model_dump(),
        "driver": {"samples": driver_samples, "median": d},
        "raw": {"samples": raw_samples, "median": r},
        "ratio_downtime": d["qemu_downtime_ms"] / max(r["qemu_downtime_ms"], 1e-9),
        "counter": {"start": start_counter, "end": end_counter},
    }
    out = RESULTS if args.memory == 128 else RESULTS.with_name(f"migrate_raw-{args.memory}.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"{args.memory} MiB guest, {args.rounds} rounds each, medians (QEMU's measure):")
    for label, m in (("driver", d), ("raw QMP", r)):
        print(
            f"  {label:8s} downtime {m['qemu_downtime_ms']:6.1f} ms"
            f"  total {m['qemu_total_ms']:6.1f} ms  | wall: migrate {m['migrate_call_ms']:6.1f} ms,"
            f" prepare {m['prepare_ms']:6.1f} ms,"
            f" resume {m['resume_ms']:5.1f} ms"
        )
    print(f"  guest counter {start_counter} -> {end_counter} (never reset)")
    print(f"written {out}")


if __name__ == "__main__":
    asyncio.run(main())
