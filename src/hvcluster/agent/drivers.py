"""Pick and build this host's driver from the agent config."""

from __future__ import annotations

from hvcluster.agent.config import AgentConfig
from hvcluster.drivers.base import Driver
from hvcluster.drivers.qemu.driver import QemuDriver
from hvcluster.drivers.qemu.settings import QemuSettings


def make_driver(cfg: AgentConfig) -> Driver:
    if cfg.driver == "qemu":
        return QemuDriver(cfg.run_dir, QemuSettings(accelerator=cfg.accel, cache_dir=cfg.cache_dir))
    from hvcluster.drivers.sim import SimDriver

    return SimDriver(run_dir=cfg.run_dir, seed=cfg.sim_seed)
