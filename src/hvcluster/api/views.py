"""What the API answers: a VM or node with everything known of it merged, and lists that
say which stored values they had to skip."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hvcluster.models.config import ClusterConfig
from hvcluster.models.event import Event
from hvcluster.models.lifecycle import VMState
from hvcluster.models.node import Node, NodeAlive
from hvcluster.models.vm import Placement, VMSpec, VMStatus


class View(BaseModel):
    model_config = ConfigDict(frozen=True)


class Skipped(View):
    """A stored value that does not decode: left out of the answer, reported here."""

    key: str
    error: str


class VMView(View):
    name: str
    desired_state: str
    state: VMState  # the owning agent's report, or what follows from spec and placement
    node: str  # where it is placed ("" when nowhere)
    spec: VMSpec
    placement: Placement | None = None
    status: VMStatus | None = None
    # the spec's mod revision: an edit (PATCH /vms/{name}) may name it, refused if changed
    spec_revision: int = 0
    # what the request that answers with it should tell the admin at once (admission
    # control's warn mode, on create and start); never stored, empty on reads
    warnings: list[str] = []


class VMList(View):
    vms: list[VMView]
    skipped: list[Skipped] = []
    revision: int


class NodeView(View):
    name: str
    alive: bool
    alive_since: float | None = None
    admin_state: str
    vms: int = 0  # VMs placed on it
    node: Node
    heartbeat: NodeAlive | None = None
    # Does its watchdog acknowledge feeding ("ok", "not acknowledging": then it starts no
    # VM, node.watchdog says since when and why; "unknown": its agent has not said)?
    watchdog: str = "unknown"
    # Measured CPU use: the host's busy cores averaged over ``cpu_window_s``, as its agent
    # last published it for the balancer (usage/<node>, every 30 s) at ``cpu_measured_at``;
    # None: not published yet.
    cpu_used_cores: float | None = None
    cpu_window_s: float | None = None
    cpu_measured_at: float | None = None
    # Memory of the VMs placed on it: there is no overcommit, so what the balancer counts
    # as its memory use.
    memory_placed_mib: int = 0


class NodeList(View):
    nodes: list[NodeView]
    skipped: list[Skipped] = []
    revision: int


class EventView(View):
    seq: int
    revision: int
    event: Event


class EventList(View):
    events: list[EventView]
    skipped: list[Skipped] = []
    revision: int  # follow from revision + 1 to see what comes next


class Counts(View):
    nodes: int = 0
    nodes_alive: int = 0
    nodes_up: int = 0
    vms: int = 0
    vms_desired_running: int = 0
    vms_placed: int = 0
    vms_by_state: dict[str, int] = Field(default_factory=dict)


class ClusterView(View):
    cluster: str
    served_by: str
    config: ClusterConfig
    config_stored: bool  # False: the defaults, no config key yet
    counts: Counts
    skipped: list[Skipped] = []
    revision: int


class Health(View):
    ok: bool
    node: str
    revision: int


class ActionRequest(BaseModel):
    """The optional body of an action: why (kept in the event, and as a node's admin reason)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=500)


class ResumeRequest(ActionRequest):
    # A quarantined node is only resumed when this is said explicitly (WSFC's
    # -ClearQuarantine): the controller put it there for failing too often.
    clear_quarantine: bool = False
    # none: the VMs away from the node (it is one of their preferred owners) stay where they
    # are until they next move, whatever their own failback policy says (recorded on the
    # node as failback_held, which the scheduler honours); policy: each VM's own failback
    # policy decides; immediate: every VM drained off the node moves back now (live).
    failback: Literal["none", "immediate", "policy"] = "policy"


class Deleted(View):
    name: str
    deleted: bool = True
    revision: int
