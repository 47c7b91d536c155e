"""Guest CPU models on this node: the default it gives VMs it cold-starts, every model it
can provide (reported in ``nodes/<me>``), and the model each VM it starts gets.

The model follows the VM (see :mod:`hvcluster.models.guestcpu`): a cold start takes the
spec's ``cpu_model`` or this node's default; an incoming migration (live, quick,
shared-nothing) takes the model the VM ran with, from the migration record."""

from __future__ import annotations

import asyncio

from hvcluster.drivers.base import Driver, HostFacts
from hvcluster.drivers.errors import SpecError
from hvcluster.drivers.qemu.driver import QemuDriver
from hvcluster.drivers.qemu.guestcpu import cpu_models
from hvcluster.models.guestcpu import provided
from hvcluster.models.vm import VMSpec


async def with_guest_cpu(facts: HostFacts, driver: Driver) -> HostFacts:
    """``facts`` with ``guest_cpu_model``, ``guest_cpu_problem`` and ``guest_cpu_models``
    filled in: for qemu, its ``-cpu`` default and the models QEMU can provide under the
    node's accelerator (asked once per agent process); for sim, what the sim host says (its
    own model by default)."""
    inv = facts.inventory
    if isinstance(driver, QemuDriver):
        binary, model = driver.settings.binary, driver.settings.cpu_model
        known = await asyncio.to_thread(cpu_models, binary, inv.accelerator)
        problem = known.problem(binary, model, inv.accelerator)
        models = known.provided
    else:
        model, problem = inv.guest_cpu_model or inv.cpu_model or inv.driver, ""
        models = inv.guest_cpu_models or (model,)
    update = {"guest_cpu_model": model, "guest_cpu_problem": problem, "guest_cpu_models": models}
    return facts.model_copy(update={"inventory": inv.model_copy(update=update)})


def guest_spec(spec: VMSpec, facts: HostFacts | None, model: str = "") -> VMSpec:
    """``spec`` as this node starts it, with an explicit CPU model: ``model`` (the one the VM
    runs with, for an incoming migration), else the spec's own, else this node's default.
    Raises :class:`SpecError` (field ``cpu_model``) when this node cannot provide it."""
    if facts is None:
        return spec.model_copy(update={"cpu_model": model}) if model else spec
    inv = facts.inventory
    chosen = model or spec.cpu_model or inv.guest_cpu
    own = chosen == inv.guest_cpu and not inv.guest_cpu_problem  # max/host: here, not moved
    if chosen not in provided(inv) and not own:
        why = inv.guest_cpu_problem if chosen == inv.guest_cpu else ""
        raise SpecError(
            f"this node cannot give vm {spec.name} CPU model {chosen}"
            + (f": {why}" if why else f" (it provides {', '.join(provided(inv)) or 'none'})"),
            "cpu_model",
        )
    return spec.model_copy(update={"cpu_model": chosen})
