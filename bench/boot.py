"""Boot time of the test guest through the qemu driver: start() -> QEMU running (start returns)
-> boot marker -> first heartbeat on the serial console. TCG always; KVM only where the probe
guest booted under it. Writes bench/results/boot.json."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvcluster.drivers.qemu import QemuDriver, QemuSettings
from hvcluster.drivers.qemu.probe import decide_accelerator
from hvcluster.drivers.runtime import kill_all, vm_dir
from hvcluster.guestimage.image import DEFAULT_CACHE, build_image
from hvcluster.guestimage.testguest import booted, create_disk, guest_spec, heartbeats

RESULTS = Path(__file__).parent / "results" / "boot.json"


async def one_boot(accel: str, cache: Path, work: Path, i: int) -> dict[str, float]:
    image = build_image(cache, log=lambda _: None)
    run_dir = work / f"{accel}-{i}"
    disk = create_disk(work / f"{accel}-{i}.qcow2")
    driver = QemuDriver(run_dir, QemuSettings(accelerator=accel, cache_dir=cache))  # type: ignore[arg-type]
    serial = vm_dir(run_dir, "boot") / "serial.log"
    try:
        t0 = time.monotonic()
        await driver.start(guest_spec("boot", image, disk), 1)
        running = time.monotonic() - t0
        marker = beat = None
        while beat is None and time.monotonic() - t0 < 120:
            now = time.monotonic() - t0
            if marker is None and booted(serial):
                marker = now
            if heartbeats(serial):
                beat = now
            await asyncio.sleep(0.01)
        if beat is None:
            raise RuntimeError(f"{accel}: no heartbeat in 120 s")
        return {"running_s": running, "boot_marker_s": marker or beat, "first_heartbeat_s": beat}
    finally:
        await driver.close()
        kill_all(run_dir)


def summary(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cache", type=Path, default=Path(os.environ.get("HVC_CACHE", DEFAULT_CACHE))
    )
    args = parser.parse_args()
    build_image(args.cache, log=lambda _: None)
    probe, why = await decide_accelerator(QemuSettings(accelerator="auto", cache_dir=args.cache))
    accels = ["tcg"] + (["kvm"] if probe == "kvm" else [])
    results: dict[str, object] = {"probe": {"verdict": probe, "why": why}, "rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="hvc-bench-boot-") as tmp:
        for accel in accels:
            samples = [await one_boot(accel, args.cache, Path(tmp), i) for i in range(args.rounds)]
            results[accel] = {"samples": samples, "summary": summary(samples)}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"KVM probe: {probe} ({why})")
    for accel in accels:
        s = results[accel]["summary"]  # type: ignore[index]
        print(
            f"{accel}: QEMU running {s['running_s']['median'] * 1000:.0f} ms, "
            f"boot marker {s['boot_marker_s']['median']:.2f} s, "
            f"first heartbeat {s['first_heartbeat_s']['median']:.2f} s "
            f"(median of {args.rounds}; heartbeat min {s['first_heartbeat_s']['min']:.2f} "
            f"max {s['first_heartbeat_s']['max']:.2f})"
        )
    print(f"written {RESULTS}")


if __name__ == "__main__":
    asyncio.run(main())
