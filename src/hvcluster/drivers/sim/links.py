"""The links of a sim host: in memory, and the bridges the agent makes there are the ones
the sim driver finds for VM NICs (:meth:`SimDriver.links`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hvcluster.host.network import MemoryLinks

if TYPE_CHECKING:
    from hvcluster.drivers.sim.driver import SimDriver


class SimHostLinks(MemoryLinks):
    def __init__(self, driver: SimDriver) -> None:
        super().__init__()
        self.driver = driver

    async def add_bridge(self, name: str) -> None:
        await super().add_bridge(name)
        bridges = tuple(n for n, link in self.links.items() if link.kind == "bridge")
        self.driver.host = self.driver.host.model_copy(update={"switches": bridges})
