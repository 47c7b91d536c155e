"""The guest CPU model this node gives its VMs, and whether the host can provide it, added
to the inventory the node reports (``nodes/<me>``). Live migration only goes between nodes
whose guests see the same model (see :mod:`hvcluster.scheduler.compat`)."""

from __future__ import annotations

import asyncio

from hvcluster.drivers.base import Driver, HostFacts
from hvcluster.drivers.qemu.driver import QemuDriver
from hvcluster.drivers.qemu.guestcpu import guest_cpu_problem


async def with_guest_cpu(facts: HostFacts, driver: Driver) -> HostFacts:
    """``facts`` with ``guest_cpu_model`` and ``guest_cpu_problem`` filled in: for qemu, its
    ``-cpu`` model, asked of QEMU under the node's accelerator; for sim, the sim host's
    model (which the sim guests "see")."""
    inv = facts.inventory
    if isinstance(driver, QemuDriver):
        model = driver.settings.cpu_model
        problem = await asyncio.to_thread(
            guest_cpu_problem, driver.settings.binary, model, inv.accelerator
        )
    else:
        model, problem = inv.cpu_model or inv.driver, ""
    inventory = inv.model_copy(update={"guest_cpu_model": model, "guest_cpu_problem": problem})
    return facts.model_copy(update={"inventory": inventory})
