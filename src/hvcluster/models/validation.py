"""Cluster validation (``hvc cluster validate``): what is checked from, and the report.

The facts are what the nodes report in the store plus what the API measured when asked
(TCP probes between agents, clocks, etcd's health); the checks
(:mod:`hvcluster.validate`) turn facts into a report, by category, like a failover
cluster's "Test-Cluster".
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from hvcluster.models.base import Model
from hvcluster.models.node import Node
from hvcluster.models.storage import Switch, Volume


class Category(StrEnum):
    INVENTORY = "inventory"
    HYPERVISOR = "hypervisor"
    NETWORK = "network"
    STORAGE = "storage"
    TIME = "time"
    ETCD = "etcd"


class CheckStatus(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


class Check(Model):
    category: Category
    name: str  # short, stable: "volume csv1", "api n1 -> n2"
    status: CheckStatus
    message: str  # what was found
    action: str = ""  # what to do about it (empty when it passed)
    nodes: tuple[str, ...] = ()  # the nodes it is about (for a failure: the ones at fault)


class ValidationReport(Model):
    cluster: str
    served_by: str  # the agent whose API ran the checks
    time: float  # wall clock of that agent when it ran them
    duration_ms: float = 0.0
    checks: tuple[Check, ...] = ()

    def count(self, status: CheckStatus) -> int:
        return sum(1 for c in self.checks if c.status is status)

    @property
    def failed(self) -> bool:
        return any(c.status is CheckStatus.FAIL for c in self.checks)


# --- facts -------------------------------------------------------------------------------


class Probe(Model):
    """Could ``source``'s agent open a TCP connection to ``target``'s agent API (``kind``
    "api"), or to a listener ``target`` opened on its migration address, on a free port as
    QEMU does for an incoming migration (``kind`` "migration")?"""

    source: str
    target: str  # node name
    address: str  # host:port that was tried
    reachable: bool
    latency_ms: float | None = None
    error: str = ""  # why not; or why the source itself could not be asked
    # False: unknown, because the source's agent did not answer (or, for a migration probe,
    # the target's agent could not be asked to open its listener).
    asked: bool = True
    kind: Literal["api", "migration"] = "api"


class ClockOffset(Model):
    """A node's wall clock against the asking agent's: ``offset_s`` > 0 means it is ahead.

    Measured as NTP does: the other's timestamp against the middle of the request, so the
    true offset lies within ``offset_s ± uncertainty_s`` (half the round trip)."""

    node: str
    offset_s: float | None = None
    uncertainty_s: float = 0.0
    error: str = ""  # why it could not be measured


class EtcdMemberFacts(Model):
    name: str
    reachable: bool
    is_leader: bool = False
    latency_ms: float | None = None
    db_size: int | None = None
    error: str = ""


class EtcdFacts(Model):
    members: tuple[EtcdMemberFacts, ...] = ()
    leader: str | None = None
    has_quorum: bool = False
    error: str = ""  # the health check itself failed


class ValidationFacts(Model):
    cluster: str
    served_by: str
    time: float
    nodes: tuple[Node, ...] = ()
    alive: frozenset[str] = frozenset()
    volumes: tuple[Volume, ...] = ()
    switches: tuple[Switch, ...] = ()
    probes: tuple[Probe, ...] = ()
    clocks: tuple[ClockOffset, ...] = ()
    etcd: EtcdFacts = EtcdFacts()
    # node -> {vm: the CPU model its guest runs with} for the VMs running there ("": not
    # reported, the node's default then)
    guest_cpus: dict[str, dict[str, str]] = {}


class ProbeAnswer(Model):
    """What ``GET /api/v1/probe`` answers: this agent's clock, and the probe if one was asked."""

    node: str
    time: float  # this agent's wall clock when it answered
    target: str | None = None
    reachable: bool | None = None
    latency_ms: float | None = Field(default=None, ge=0)
    error: str = ""
    asked: bool = True  # False: the probe could not be carried out (see ``error``)


class ListenAnswer(Model):
    """What ``POST /api/v1/probe/listen`` answers: the short-lived listener this agent opened
    on its migration address (``host:port``) and the token it greets a connection with; or
    why it could not open one."""

    node: str
    address: str = ""
    token: str = ""
    error: str = ""
