"""Guest CPU models on this node: the default it gives VMs it cold-starts, every model it
can provide (reported in ``nodes/<me>``), and the model each VM it starts gets.

The model follows the VM (see :mod:`hvcluster.models.guestcpu`): a cold start takes the
spec's ``cpu_model`` or this node's default; an incoming migration (live, quick,
shared-nothing) takes the model the VM ran with, from the migration record. What the host
can provide is the driver's answer (:meth:`Driver.guest_cpus`)."""

from __future__ import annotations

from hvcluster.drivers.base import Driver, HostFacts
from hvcluster.drivers.errors import SpecError
from hvcluster.models.guestcpu import default_guest_cpu, guest_cpu_of, provided
from hvcluster.models.vm import VMSpec


async def with_guest_cpu(facts: HostFacts, driver: Driver) -> HostFacts:
    """``facts`` with ``guest_cpu_model``, ``guest_cpu_problem`` and ``guest_cpu_models``
    filled in, as the driver answers for this host."""
    inv = await driver.guest_cpus(facts.inventory)
    return facts.model_copy(update={"inventory": inv})


def guest_spec(spec: VMSpec, facts: HostFacts | None, model: str = "") -> VMSpec:
    """``spec`` as this node starts it, with an explicit CPU model: ``model`` (the one the VM
    runs with, for an incoming migration), else the spec's own, else this node's default.
    Raises :class:`SpecError` (field ``cpu_model``) when this node cannot provide it.

    Why this is not :mod:`hvcluster.models.fit`: fit asks whether a node, *as its record in
    the store says*, may take a VM (admin state, owners, switches, volumes, room,
    anti-affinity, the CPU model a spec names), and the scheduler, controller and API ask it
    before a placement or a migration is written. This runs after that, on the node the
    placement chose, and asks only what that node alone can answer from its live facts: which
    model this start uses (a migration's carried model, which fit never sees for a start)
    and whether the host gives it now. Its own default counts as given even when it is not
    among the named models it reports ("host", "max": not a model another node could be
    asked for, so fit's :func:`~hvcluster.models.fit.lacks` never meets it). The parts it
    shares with fit, which model and what a node provides, are the same functions of
    :mod:`hvcluster.models.guestcpu` fit uses."""
    if facts is None:
        return spec.model_copy(update={"cpu_model": model}) if model else spec
    inv = facts.inventory
    default = default_guest_cpu(inv)
    chosen = guest_cpu_of(spec, default, model)
    own = chosen == default and not inv.guest_cpu_problem  # max/host: here, not moved
    if chosen not in provided(inv) and not own:
        why = inv.guest_cpu_problem if chosen == default else ""
        raise SpecError(
            f"this node cannot give vm {spec.name} CPU model {chosen}"
            + (f": {why}" if why else f" (it provides {', '.join(provided(inv)) or 'none'})"),
            "cpu_model",
        )
    return spec.model_copy(update={"cpu_model": chosen})
