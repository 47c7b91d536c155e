"""The ``sim`` driver: simulated VMs with a resource model, for scale, demos and simulation."""

from hvcluster.drivers.sim.driver import SimDriver
from hvcluster.drivers.sim.model import SimParams
from hvcluster.drivers.sim.state import SimHost

__all__ = ["SimDriver", "SimHost", "SimParams"]
