"""The CPU model a node gives a VM it starts: the migration record's (the model the VM runs
with), else the spec's, else the node's default; refused when the node cannot provide it."""

from __future__ import annotations

import pytest

from hvcluster.agent.guestcpu import guest_spec
from hvcluster.drivers.base import HostFacts
from hvcluster.drivers.errors import SpecError
from hvcluster.models.node import Capacity, Inventory
from hvcluster.models.vm import VMSpec

SPEC = VMSpec(name="web")


def facts(default: str, *models: str, problem: str = "") -> HostFacts:
    inv = Inventory(guest_cpu_model=default, guest_cpu_models=models, guest_cpu_problem=problem)
    return HostFacts(capacity=Capacity(cpus=2, memory_mib=1024), inventory=inv)


def test_the_model_chosen() -> None:
    here = facts("qemu64", "qemu64", "Nehalem", "Westmere")
    assert guest_spec(SPEC, here).cpu_model == "qemu64"  # a cold start: the node's default
    named = SPEC.model_copy(update={"cpu_model": "Westmere"})
    assert guest_spec(named, here).cpu_model == "Westmere"  # the spec names one
    assert guest_spec(named, here, "Nehalem").cpu_model == "Nehalem"  # as it runs elsewhere
    assert guest_spec(SPEC, None, "Nehalem").cpu_model == "Nehalem"  # facts not read yet
    assert guest_spec(SPEC, None) is SPEC


def test_a_model_the_node_cannot_provide_is_refused_naming_the_field() -> None:
    here = facts("qemu64", "qemu64", "Nehalem")
    with pytest.raises(SpecError) as e:
        guest_spec(SPEC, here, "Skylake-Server")
    assert e.value.field == "cpu_model"
    assert "cannot give vm web CPU model Skylake-Server (it provides qemu64, Nehalem)" in str(
        e.value
    )
    lacking = facts("EPYC", problem="it lacks sha-ni")
    with pytest.raises(SpecError, match="EPYC: it lacks sha-ni"):
        guest_spec(SPEC, lacking)


def test_a_default_that_does_not_migrate_still_starts_here() -> None:
    # max (or host) is this host's own CPU: QEMU lists it as not migration-safe, so it is
    # not among the models the node provides to others, but the node starts VMs with it
    here = facts("max", "qemu64")
    assert guest_spec(SPEC, here).cpu_model == "max"
    with pytest.raises(SpecError):
        guest_spec(SPEC, facts("qemu64", "qemu64"), "max")
