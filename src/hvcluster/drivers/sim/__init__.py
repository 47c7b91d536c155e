"""The ``sim`` driver: simulated VMs with a resource model, for scale, demos and simulation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hvcluster.drivers.sim.driver import SimDriver
from hvcluster.drivers.sim.model import SimParams
from hvcluster.drivers.sim.state import SimHost

if TYPE_CHECKING:
    from hvcluster.drivers.registry import DriverOptions

__all__ = ["SimDriver", "SimHost", "SimParams", "create"]


def create(options: DriverOptions) -> SimDriver:
    """The registry's way to build this driver (:mod:`hvcluster.drivers.registry`)."""
    return SimDriver(run_dir=options.run_dir, seed=options.sim_seed)
