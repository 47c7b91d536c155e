"""Measured CPU use of a node and its VMs, stored at ``usage/<node>`` by the node's agent.

Its own key, not the node record: it changes every publish, and the node record is written
with a compare by the agent's CAS loop and read by everyone. Small (one float per VM), put
at a low rate (every ``publish_s``, 30 s by default), averaged by the agent over the
cluster's ``balance.cpu_window_s``: the balancer reads it as it is."""

from __future__ import annotations

from pydantic import Field

from hvcluster.models.base import Model
from hvcluster.models.names import Name


class NodeUsage(Model):
    node: Name
    at: float  # wall clock of the newest sample in it
    window_s: float = Field(ge=0)  # the span of the samples averaged (shorter after a start)
    host_cores: float | None = Field(default=None, ge=0)  # host-wide busy cores; None: unknown
    # the host's use besides its guests (each sample's host less its VMs, averaged): what
    # stays when a VM leaves, unlike ``host_cores``, which still holds a VM gone meanwhile
    other_cores: float | None = Field(default=None, ge=0)
    vms: dict[str, float] = {}  # VM -> busy cores (its QEMU process; sim: its model)


class PlannedMove(Model):
    vm: str
    source: str
    target: str
    wave: int
    reason: str


class BalanceAnswer(Model):
    """The controller's plan for a :class:`BalanceRequest`, as it computed it."""

    moves: tuple[PlannedMove, ...] = ()
    over: tuple[str, ...] = ()
    unresolved: tuple[str, ...] = ()
    reason: str = ""
    started: bool = False  # a run began with it (an apply, not a dry run)
    why_not_started: str = ""  # an apply that could not begin a run (one is under way)


class BalanceRequest(Model):
    """``requests/balance/<id>``: the API asks the leading controller for its balance plan
    (``apply``: and to carry it out). Only the controller plans (the API imports no scheduler);
    it writes ``answer`` into the same key, the API reads it and deletes the key."""

    id: str
    by: str
    at: float
    apply: bool = False
    answer: BalanceAnswer | None = None
