"""A node (host) of the cluster, stored at ``nodes/<node>``."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, AliasChoices, Field

from hvcluster.models.base import Model
from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.models.names import Labels, Name, check_host_or_empty

# A host's migration address: "" (its ``address``), or an IP address or host name.
HostOrEmpty = Annotated[str, Field(max_length=253), AfterValidator(check_host_or_empty)]


class Capacity(Model):
    cpus: int = Field(gt=0)
    memory_mib: int = Field(gt=0)


class Inventory(Model):
    """What the node's driver found on the host."""

    # The host's own CPU (``model name`` of /proc/cpuinfo; sim: its host's model). Records
    # written before it was named so call it ``cpu_model``: still read (``cpu_model``
    # everywhere else is a guest's).
    host_cpu: str = Field(default="", validation_alias=AliasChoices("host_cpu", "cpu_model"))
    cpu_flags: tuple[str, ...] = ()
    accelerator: str = "tcg"  # "kvm" or "tcg", decided by a probe guest
    qemu_version: str = ""
    driver: str = "qemu"
    # The CPU model this node's driver gives its guests (qemu: its ``-cpu``; "" when the
    # agent did not report it), and why the host cannot provide that model ("" if it can).
    # A running guest only moves live between nodes whose guests see the same model.
    guest_cpu_model: str = ""
    guest_cpu_problem: str = ""
    # Every named CPU model this host can give guests in full (qemu: query-cpu-definitions
    # entries with no unavailable feature, under its accelerator); () when not reported:
    # then only its default (see :func:`hvcluster.models.guestcpu.default_guest_cpu`).
    guest_cpu_models: tuple[str, ...] = ()


class WatchdogReport(Model):
    """Whether this node's watchdog acknowledges feeding, as its agent last saw it. While it
    does not, the agent starts no VM: nothing would kill them were the node cut off."""

    acknowledging: bool
    since: float  # wall clock: since when it is so
    problem: str = ""  # why it is not ("no watchdog listens at /run/hvc/watchdog.sock ...")


class Node(Model):
    name: Name
    address: str = Field(min_length=1)  # where its API (and migrations, by default) are reached
    # Where QEMU's migration stream and a shared-nothing move's disks (NBD) reach this node,
    # if not at ``address``: a host's separate migration network (its agent config's
    # ``migration_address``). "": at ``address``.
    migration_address: HostOrEmpty = ""
    api_port: int = Field(default=8440, gt=0, lt=65536)
    capacity: Capacity
    labels: Labels = {}
    admin_state: NodeAdminState = NodeAdminState.UP
    admin_reason: str = ""
    admin_since: float = 0.0
    switches: tuple[Name, ...] = ()  # switches whose bridge this node has, ready
    volumes: tuple[Name, ...] = ()  # volumes this node sees, with the right id
    volume_free_mib: dict[str, int] = {}  # free space of each volume it sees
    # Switches and volumes it does not have, and why ("not root", "marker holds id x").
    switch_problems: dict[str, str] = {}
    volume_problems: dict[str, str] = {}
    # Its interfaces that carry an address or the default route, and what they carry: never
    # an uplink (enslaving one would cut the node off the network). Written by its agent.
    interfaces_in_use: dict[str, str] = {}
    inventory: Inventory = Inventory()
    registered_at: float = 0.0  # wall clock of the agent's last (re-)registration
    # The timings its agent runs with, written at each registration (0: not reported, an
    # agent from before). An agent reads the cluster config's timings only when it starts,
    # and keeps the TTL of a lease it adopted, so after an admin changed them the controller
    # waits as long as either the config or these need (scheduler/liveness.py).
    fence_after_s: float = Field(default=0.0, ge=0, le=3600.0)
    lease_ttl_s: float = Field(default=0.0, ge=0, le=3600.0)
    watchdog: WatchdogReport | None = None  # written by the agent; None: not reported
    # Written by the controller: times this node was declared dead (for quarantine), and
    # until when it is quarantined.
    failures: tuple[float, ...] = ()
    quarantined_until: float | None = None
    # Written by the API when an admin ends a quarantine early (resume with
    # clear_quarantine): the failures before it are forgiven, not counted again (they would
    # quarantine the node again at once).
    failures_forgiven_at: float | None = None
    # Written by the API on ``resume --failback none``: VM -> the placement epoch it had
    # then. While a VM is still at that epoch (it has not moved since), it does not fail back
    # to this node, whatever its own failback policy says. Resuming with another failback
    # mode clears it.
    failback_held: dict[str, int] = {}

    @property
    def migration_host(self) -> str:
        """The address its incoming migrations listen on (without IPv6 brackets)."""
        return (self.migration_address or self.address).strip("[]")


class NodeAlive(Model):
    """The value of ``alive/<node>``, bound to the node's lease."""

    node: Name
    lease: int
    since: float  # wall clock, for display only
    pid: int = 0
