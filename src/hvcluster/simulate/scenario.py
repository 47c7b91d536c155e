"""A simulation scenario (``hvc sim run SCENARIO.toml``): the cluster's nodes, its VMs with
their policies, and a timeline of admin commands and faults, read from TOML and checked
before anything runs, every problem named by its field (``timeline.2.node: ...``).

Example::

    name = "failover"
    [sim]
    duration_s = 30
    [cluster]                      # ClusterConfig fields over the simulation's fast timings
    mass_failure_grace_s = 3.0
    [[nodes]]
    name = "n1"
    [[vms]]
    name = "web"
    ha = { priority = "high", preferred_owners = ["n1"] }
    [[timeline]]
    at = 5.0
    do = "crash"
    node = "n1"
"""

from __future__ import annotations

import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from hvcluster.models.base import Model, describe
from hvcluster.models.config import ClusterConfig
from hvcluster.models.errors import InvalidInput
from hvcluster.models.names import Name
from hvcluster.models.vm import HAPolicy
from hvcluster.simulate.cluster import FAST

LEADER = "@leader"  # a step's node: whichever node leads the controllers at that moment
DAY_S = 86_400.0


class Do(StrEnum):
    """What a timeline step does. Faults: ``crash`` (the host dies, its VMs with it),
    ``restart`` (a crashed host boots again, empty), ``hang`` / ``unhang`` (the agent stops
    making progress; its VMs run on until its watchdog fires), ``partition`` / ``heal`` (the
    node loses etcd and gets it back), ``etcd_down`` / ``etcd_up`` (all of etcd), ``vm_crash``
    (a VM's guest dies). Admin commands: ``drain``, ``pause``, ``resume`` (a node),
    ``start_vm``, ``stop_vm`` (a VM's desired state), ``config`` (cluster settings). Load:
    ``cpu`` (a VM's guest uses ``cpu_percent`` of one host CPU from then on, wherever it
    runs: what the balancer measures)."""

    CRASH = "crash"
    RESTART = "restart"
    HANG = "hang"
    UNHANG = "unhang"
    PARTITION = "partition"
    HEAL = "heal"
    ETCD_DOWN = "etcd_down"
    ETCD_UP = "etcd_up"
    VM_CRASH = "vm_crash"
    DRAIN = "drain"
    PAUSE = "pause"
    RESUME = "resume"
    START_VM = "start_vm"
    STOP_VM = "stop_vm"
    CONFIG = "config"
    CPU = "cpu"


NODE_STEPS = {Do.CRASH, Do.RESTART, Do.HANG, Do.UNHANG, Do.PARTITION, Do.HEAL, Do.DRAIN,
              Do.PAUSE, Do.RESUME}  # fmt: skip
VM_STEPS = {Do.VM_CRASH, Do.START_VM, Do.STOP_VM, Do.CPU}


class SimSettings(Model):
    seed: int = Field(default=0, ge=0)  # the sim driver's dice and the VMs' uids
    duration_s: float = Field(default=60.0, gt=0, le=DAY_S)  # virtual seconds simulated
    step_s: float = Field(default=0.1, gt=0, le=10)  # invariants are checked this often
    cpus: int = Field(default=4, ge=1, le=1024)  # each host's, unless its node says
    memory_mib: int = Field(default=8192, ge=256, le=16 * 1024 * 1024)
    # An HA VM that can run somewhere must run again within this long (virtual seconds).
    recovery_slo_s: float = Field(default=20.0, gt=0, le=DAY_S)
    boot_s: float = Field(default=0.3, ge=0, le=600)  # a sim guest's boot time


class NodeEntry(Model):
    name: Name
    cpus: int | None = Field(default=None, ge=1, le=1024)
    memory_mib: int | None = Field(default=None, ge=256, le=16 * 1024 * 1024)


class VMEntry(Model):
    name: Name
    vcpus: int = Field(default=1, ge=1, le=1024)
    memory_mib: int = Field(default=256, ge=16, le=16 * 1024 * 1024)
    desired_state: Literal["running", "stopped"] = "running"
    ha: HAPolicy = HAPolicy()
    # its guest's CPU use, percent of one host CPU (100: a whole core busy) wherever it runs;
    # None: the sim driver's own model of a guest's use
    cpu_percent: float | None = Field(default=None, ge=0, le=100 * 1024)


class Step(Model):
    at: float = Field(ge=0, le=DAY_S)  # virtual seconds from the start
    do: Do
    node: str = ""  # a node's name, or "@leader"
    vm: str = ""
    set: dict[str, Any] = {}  # config: dotted ClusterConfig field -> value
    failback: Literal["policy", "none", "immediate"] = "policy"  # resume
    clear_quarantine: bool = False  # resume
    cpu_percent: float | None = Field(default=None, ge=0, le=100 * 1024)  # cpu

    @model_validator(mode="after")
    def _needs(self) -> Step:
        if self.do in NODE_STEPS and not self.node:
            raise ValueError(f"'{self.do.value}' needs a node")
        if self.do in VM_STEPS and not self.vm:
            raise ValueError(f"'{self.do.value}' needs a vm")
        if self.do is Do.CONFIG and not self.set:
            raise ValueError("'config' needs set = { field = value, ... }")
        if self.do is Do.CPU and self.cpu_percent is None:
            raise ValueError("'cpu' needs cpu_percent")
        return self


class Scenario(Model):
    name: str = Field(default="", max_length=200)
    description: str = Field(default="", max_length=4000)
    sim: SimSettings = SimSettings()
    cluster: dict[str, Any] = {}  # ClusterConfig fields over FAST
    nodes: tuple[NodeEntry, ...] = Field(min_length=1, max_length=64)
    vms: tuple[VMEntry, ...] = Field(default=(), max_length=8000)
    timeline: tuple[Step, ...] = Field(default=(), max_length=10_000)

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        nodes = [n.name for n in self.nodes]
        vms = [v.name for v in self.vms]
        for what, names in (("nodes", nodes), ("vms", vms)):
            if len(set(names)) != len(names):
                dup = sorted({n for n in names if names.count(n) > 1})
                raise ValueError(f"{what}: names must be unique ({', '.join(dup)})")
        for i, step in enumerate(self.timeline):
            if step.node and step.node != LEADER and step.node not in nodes:
                raise ValueError(f"timeline.{i}.node: no node {step.node!r} in nodes")
            if step.vm and step.vm not in vms:
                raise ValueError(f"timeline.{i}.vm: no vm {step.vm!r} in vms")
            if step.do is Do.CONFIG:
                try:
                    config_with(self.config(), step.set)
                except InvalidInput as e:
                    raise ValueError(f"timeline.{i}.set: {e}") from None
        for i, vm in enumerate(self.vms):
            for field in ("preferred_owners", "possible_owners"):
                unknown = [n for n in getattr(vm.ha, field) if n not in nodes]
                if unknown:
                    raise ValueError(f"vms.{i}.ha.{field}: no node {unknown[0]!r} in nodes")
        self.config()
        return self

    def config(self) -> ClusterConfig:
        """The cluster's config: :data:`FAST` with the scenario's ``[cluster]`` fields."""
        try:
            return ClusterConfig.model_validate({**FAST.model_dump(), **self.cluster})
        except ValidationError as e:
            raise ValueError(f"cluster.{describe(e)}") from None


def config_with(config: ClusterConfig, changes: dict[str, Any]) -> ClusterConfig:
    """``config`` with ``changes`` (dotted field names: ``quarantine.threshold``)."""
    data = config.model_dump()
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        where = data
        for part in path:
            if not isinstance(where.get(part), dict):
                raise InvalidInput("no such setting", field=dotted)
            where = where[part]
        if last not in where:
            raise InvalidInput("no such setting", field=dotted)
        where[last] = value
    try:
        return ClusterConfig.model_validate(data)
    except ValidationError as e:
        raise InvalidInput(describe(e), field=None) from None


def parse_scenario(data: dict[str, Any], source: str = "scenario") -> Scenario:
    """Validate ``data`` into a :class:`Scenario`; :class:`InvalidInput` naming each bad
    field (``source``: the file, for the message)."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        # a check across fields (a model validator) has no field of its own: it names one
        text = describe(e).replace("(value): Value error, ", "")
        raise InvalidInput(f"{source}: {text}", field=None) from None


def load_scenario(path: Path) -> Scenario:
    """Read and check the scenario file ``path``."""
    try:
        text = path.read_text()
    except OSError as e:
        raise InvalidInput(f"{path}: cannot read: {e.strerror or e}", field=None) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"{path}: not valid TOML: {e}", field=None) from None
    return parse_scenario(data, str(path))
