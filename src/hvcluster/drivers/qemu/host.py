"""Facts of this host, read from /proc and from QEMU itself."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from hvcluster.drivers.errors import HypervisorMissing


def host_memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def cpu_jiffies(stat: str) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from the text of /proc/stat's ``cpu`` line: busy is
    every column but idle and iowait (guest time is already in user and nice)."""
    for line in stat.splitlines():
        if line.startswith("cpu "):
            cols = [int(x) for x in line.split()[1:]]
            total = sum(cols[:8])  # user nice system idle iowait irq softirq steal
            idle = cols[3] + (cols[4] if len(cols) > 4 else 0)
            return total - idle, total
    raise RuntimeError("no cpu line in /proc/stat")


class HostCpu:
    """Busy cores of this host between two reads of /proc/stat."""

    def __init__(self, stat: Path = Path("/proc/stat")) -> None:
        self.stat, self.last = stat, cpu_jiffies(stat.read_text())

    def busy_cores(self) -> float | None:
        busy, total = cpu_jiffies(self.stat.read_text())
        d_busy, d_total = busy - self.last[0], total - self.last[1]
        self.last = (busy, total)
        if d_total <= 0:
            return None  # read twice within a tick: nothing to tell
        return host_cpus() * d_busy / d_total


def host_cpus() -> int:
    return len(os.sched_getaffinity(0)) or os.cpu_count() or 1


def cpu_model_and_flags() -> tuple[str, tuple[str, ...]]:
    model, flags = "", tuple[str, ...]()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = tuple(sorted(value.split()))
        if model and flags:
            break
    return model, flags


def qemu_version(binary: str) -> str:
    """``7.2.22`` from ``QEMU emulator version 7.2.22 (Debian ...)``."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HypervisorMissing(f"QEMU binary {binary!r} cannot run: {e}") from e
    words = out.stdout.split()
    if out.returncode != 0 or "version" not in words:
        raise HypervisorMissing(f"QEMU binary {binary!r} gave no version: {out.stderr.strip()}")
    return words[words.index("version") + 1]
