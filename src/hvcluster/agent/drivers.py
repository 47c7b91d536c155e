"""Pick and build this host's driver from the agent config, and where its bridges are made."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hvcluster.agent.config import AgentConfig
from hvcluster.drivers.base import Driver
from hvcluster.drivers.qemu.driver import QemuDriver
from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.host.network import IpLinks, Links, MemoryLinks

if TYPE_CHECKING:
    from hvcluster.drivers.sim import SimDriver


def make_driver(cfg: AgentConfig) -> Driver:
    if cfg.driver == "qemu":
        settings = QemuSettings(
            accelerator=cfg.accel, cache_dir=cfg.cache_dir, cpu_model=cfg.guest_cpu
        )
        return QemuDriver(cfg.run_dir, settings)
    from hvcluster.drivers.sim import SimDriver

    return SimDriver(run_dir=cfg.run_dir, seed=cfg.sim_seed)


class SimHostLinks(MemoryLinks):
    """The links of a sim host: in memory, and the bridges the agent makes there are the
    ones the sim driver finds for VM NICs."""

    def __init__(self, driver: SimDriver) -> None:
        super().__init__()
        self.driver = driver

    async def add_bridge(self, name: str) -> None:
        await super().add_bridge(name)
        bridges = tuple(n for n, link in self.links.items() if link.kind == "bridge")
        self.driver.host = self.driver.host.model_copy(update={"switches": bridges})


def make_links(driver: Driver) -> Links:
    """Where switch bridges are made: the host's own links (``ip``) for a real hypervisor,
    the sim host's in memory for the sim driver."""
    from hvcluster.drivers.sim import SimDriver

    if isinstance(driver, SimDriver):
        return SimHostLinks(driver)
    return IpLinks()
