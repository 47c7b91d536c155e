"""The resource model of a simulated VM: pure functions of its parameters, a seeded random
source and time. No I/O, no clock reads: times come in as arguments."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from pydantic import Field

from hvcluster.models.base import Model

MIB = 1024 * 1024


class SimParams(Model):
    boot_s: float = Field(default=5.0, ge=0)  # mean time from start to a booted guest
    boot_jitter: float = Field(default=0.2, ge=0, le=1)  # +- fraction of boot_s
    shutdown_s: float = Field(default=1.0, ge=0)  # a guest's clean power-off takes this long
    idle_cpu_percent: float = Field(default=10.0, ge=0)  # steady load of one vCPU, on average
    load_period_s: float = Field(default=300.0, gt=0)  # the load swings with this period
    working_set: float = Field(default=0.6, gt=0, le=1)  # share of memory a booted guest touches
    dirty_mib_s: float = Field(default=20.0, ge=0)  # memory the guest dirties per second
    max_passes: int = Field(default=30, ge=1)
    save_mib_s: float = Field(default=2000.0, gt=0)  # writing state to a shared volume
    disk_copy_mib_s: float = Field(default=2000.0, gt=0)  # a disk mirrored to another file
    crash_rate_per_hour: float = Field(default=0.0, ge=0)  # random crashes, per VM
    migration_failure_rate: float = Field(default=0.0, ge=0, le=1)


@dataclass(frozen=True)
class Profile:
    """What the seeded dice decided for one VM run."""

    boot_s: float
    cpu_share: float  # fraction of one vCPU, on average, once booted
    phase: float  # of its load swing
    crash_after_s: float | None  # random crash this long after the start, if any


def vm_rng(seed: int, name: str, epoch: int, salt: str = "") -> random.Random:
    """One random source per VM run: the same whatever order VMs are started in."""
    return random.Random(f"{seed}:{name}:{epoch}:{salt}")


def profile(params: SimParams, rng: random.Random) -> Profile:
    jitter = 1 + params.boot_jitter * (2 * rng.random() - 1)
    crash = None
    if params.crash_rate_per_hour > 0:
        crash = rng.expovariate(params.crash_rate_per_hour / 3600.0)
    return Profile(
        boot_s=params.boot_s * jitter,
        cpu_share=params.idle_cpu_percent / 100 * (0.5 + rng.random()),
        phase=rng.random() * 2 * math.pi,
        crash_after_s=crash,
    )


def cpu_percent(params: SimParams, prof: Profile, vcpus: int, age_s: float) -> float:
    """CPU use (100 = one host CPU) ``age_s`` seconds after the start."""
    if age_s < prof.boot_s:
        return 90.0 * vcpus
    swing = 1 + 0.5 * math.sin(2 * math.pi * age_s / params.load_period_s + prof.phase)
    return min(100.0 * vcpus, 100.0 * vcpus * prof.cpu_share * swing)


def memory_mib(params: SimParams, prof: Profile, total_mib: int, age_s: float) -> float:
    """Memory the guest has touched: it grows while booting, then stays at its working set."""
    booted = min(age_s / prof.boot_s, 1.0) if prof.boot_s > 0 else 1.0
    return total_mib * (0.1 + (params.working_set - 0.1) * booted)


@dataclass(frozen=True)
class Pass:
    seconds: float
    sent: int  # bytes sent in this pass
    remaining: int  # bytes still dirty at its end


def migration_plan(
    params: SimParams,
    memory_mib: int,
    bandwidth_mib_s: float,
    downtime_limit_ms: float,
) -> tuple[list[Pass], float]:
    """Pre-copy passes (each sends what the previous left dirty) until the rest fits in the
    downtime limit; returns the passes and the downtime in ms. A guest that dirties memory
    faster than the link sends it never converges: the last pass stops the guest anyway."""
    bw = bandwidth_mib_s * MIB
    dirty = params.dirty_mib_s * MIB
    to_send = memory_mib * MIB
    passes: list[Pass] = []
    while True:
        seconds = to_send / bw
        left = int(min(dirty * seconds, memory_mib * MIB * params.working_set))
        passes.append(Pass(seconds=seconds, sent=to_send, remaining=left))
        to_send = left
        if left / bw * 1000 <= downtime_limit_ms or len(passes) >= params.max_passes:
            break
    downtime_ms = to_send / bw * 1000 + 2.0
    return passes, downtime_ms
