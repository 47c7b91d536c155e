"""Cluster settings, stored at ``config``. Defaults are those of docs/architecture.md."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from hvcluster.models.base import Model
from hvcluster.models.names import PATH_MAX, PERIOD_S_MAX, Argument
from hvcluster.models.storage import normal_dir, system_dir_problem

# Upper bounds: a setting past them is a typo, and a huge one overflows where it is used
# (a timer, QEMU's migrate parameters). Timings are finite (the base model refuses inf/nan).
DAY_S = 86400.0
TIMING_S_MAX = 3600.0  # lease, keepalive, fencing and recovery timings
COUNT_MAX = 1_000_000


class MigrationSettings(Model):
    # QEMU's default cap is far too low
    max_bandwidth_mib_s: int = Field(default=10_000, gt=0, le=COUNT_MAX)
    # Postcopy's own cap (QEMU's max-postcopy-bandwidth), once it has switched: 0, QEMU's
    # default, is no cap. A migration's own cap (hvc vm move --max-bandwidth) sets both.
    max_postcopy_bandwidth_mib_s: int = Field(default=0, ge=0, le=COUNT_MAX)
    downtime_limit_ms: int = Field(default=300, gt=0, le=2_000_000)  # QEMU's own maximum
    auto_converge: bool = True
    xbzrle: bool = False
    multifd: bool = False
    postcopy: bool = False
    # With postcopy: switch to it once precopy has gone over the guest's memory this many
    # times without converging (1: right after the first full pass).
    postcopy_after_passes: int = Field(default=2, ge=1, le=COUNT_MAX)
    max_parallel_per_node: int = Field(default=2, ge=1, le=1000)
    timeout_s: float = Field(default=600.0, gt=0, le=DAY_S)
    # A drained VM whose live migration failed (or that cannot move live): "quick" tries a
    # quick migration (save state, restore on the target), "stay" leaves it, with the reason.
    drain_fallback: Literal["quick", "stay"] = "quick"

    @model_validator(mode="after")
    def _techniques_combine(self) -> Self:
        if self.postcopy and self.multifd:  # QEMU 7 refuses the pair at migrate time
            raise ValueError(
                "postcopy and multifd: QEMU cannot use both in one migration; turn one off"
            )
        return self


class QuarantineSettings(Model):
    """WSFC's defaults: a node that failed 3 times in an hour is kept out for 2 hours."""

    threshold: int = Field(default=3, ge=1, le=COUNT_MAX)
    period_s: float = Field(default=3600.0, gt=0, le=PERIOD_S_MAX)
    duration_s: float = Field(default=7200.0, gt=0, le=PERIOD_S_MAX)


# The balancer's levels, as a failover cluster has them: a node is relieved when its CPU or
# memory use is above this fraction *and* above the cluster's average (docs, "Balancing").
BALANCE_LEVELS: dict[str, float] = {"low": 0.8, "medium": 0.7, "high": 0.6}


class BalanceSettings(Model):
    """When and how hard the controller balances load by live migration."""

    enabled: bool = True  # False: only ``hvc cluster balance`` moves VMs for load
    # How aggressively: low moves VMs off nodes above 80 %, medium 70 %, high 60 %.
    level: Literal["low", "medium", "high"] = "low"
    interval_s: float = Field(default=1800.0, ge=0, le=PERIOD_S_MAX)  # 0: not periodically
    on_join: bool = True  # also when a node joins or is resumed
    cpu_window_s: float = Field(default=300.0, gt=0, le=DAY_S)  # CPU use averaged over this


class AdmissionSettings(Model):
    """Room kept for node failures: creating or starting an HA VM that the running HA VMs
    (with it) would not survive ``node_failures_tolerated`` node failures with is warned
    about or refused (``hvc cluster capacity`` shows what they survive)."""

    node_failures_tolerated: int = Field(default=0, ge=0, le=63)  # 0: no admission control
    action: Literal["warn", "refuse"] = "warn"


class ClusterConfig(Model):
    name: str = Field(default="hvc", max_length=63)
    lease_ttl_s: float = Field(default=4.0, gt=0, le=TIMING_S_MAX)
    keepalive_interval_s: float = Field(default=0.5, gt=0, le=TIMING_S_MAX)
    fence_after_s: float = Field(default=3.0, gt=0, le=TIMING_S_MAX)
    # Wait this much beyond fence_after before moving a dead node's VMs; must exceed the
    # interval at which an agent re-checks its "is it me or etcd" evidence.
    recovery_margin_s: float = Field(default=1.5, ge=0, le=TIMING_S_MAX)
    # When the controller watched a dead node's lease run out (rather than vanish early, as
    # a revoked one does), the node went a whole TTL without a keepalive reaching etcd, so
    # its watchdog fired (fence_after < TTL) before the key went: recover after only this
    # margin (for the watchdog's kill to land).
    expired_margin_s: float = Field(default=0.5, ge=0, le=TIMING_S_MAX)
    evidence_interval_s: float = Field(default=1.0, gt=0, le=TIMING_S_MAX)
    # More than this fraction of nodes vanishing at once is a control-plane event.
    mass_failure_fraction: float = Field(default=0.5, gt=0, le=1)
    mass_failure_grace_s: float = Field(default=30.0, ge=0, le=DAY_S)
    local_restart_threshold: int = Field(default=3, ge=0, le=COUNT_MAX)
    local_restart_period_s: float = Field(default=900.0, gt=0, le=PERIOD_S_MAX)
    start_group_delay_s: float = Field(default=30.0, ge=0, le=DAY_S)
    # A command that powers a node off and exits 0 once it is confirmed off ("{node}" is
    # replaced by the node's name; IPMI or Redfish tools fit here). Empty: no fence agent.
    fence_command: Argument = Field(default="", max_length=PATH_MAX)
    fence_timeout_s: float = Field(default=30.0, gt=0, le=DAY_S)
    # A VM's graceful stop: the ACPI power button, then forced off after this long (a
    # systemd guest under TCG on a busy host needs more than the default's 20 s).
    shutdown_timeout_s: float = Field(default=20.0, gt=0, le=DAY_S)
    # Records that grow with use, kept by count and by age (the leader prunes them): the
    # cluster log's newest events, and each of finished migrations and storage moves.
    event_retention: int = Field(default=10_000, ge=100, le=COUNT_MAX)
    event_max_age_s: float = Field(default=30 * DAY_S, gt=0, le=PERIOD_S_MAX)
    max_migration_records: int = Field(default=2_000, ge=10, le=COUNT_MAX)
    migration_retention_s: float = Field(default=7 * DAY_S, gt=0, le=PERIOD_S_MAX)
    migration: MigrationSettings = MigrationSettings()
    quarantine: QuarantineSettings = QuarantineSettings()
    balance: BalanceSettings = BalanceSettings()
    admission: AdmissionSettings = AdmissionSettings()
    # Host directories where a disk may be an absolute path (outside any volume); empty:
    # disks live on volumes only. Never / nor a system directory.
    allowed_disk_dirs: tuple[str, ...] = Field(default=(), max_length=64)

    @field_validator("allowed_disk_dirs")
    @classmethod
    def _allowed_disk_dirs(cls, dirs: tuple[str, ...]) -> tuple[str, ...]:
        checked = []
        for d in dirs:
            normal = normal_dir(d)
            problem = system_dir_problem(normal)
            if problem is not None:
                raise ValueError(f"not a disk directory: {problem}")
            checked.append(normal)
        return tuple(checked)

    @classmethod
    def with_profile(cls, profile: str, **settings: object) -> ClusterConfig:
        """The config of a timing profile (:data:`PROFILES`), with ``settings`` on top: how a
        lab or a real cluster's bootstrap picks ``fast`` (docs/architecture.md says what
        each costs)."""
        if profile not in PROFILES:
            raise ValueError(f"unknown timing profile {profile!r}: use {' or '.join(PROFILES)}")
        return cls.model_validate({**PROFILES[profile], **settings})

    def profile(self) -> str | None:
        """The name of the timing profile whose timings this config has, if any."""
        for name, timings in PROFILES.items():
            if all(getattr(self, k) == v for k, v in timings.items()):
                return name
        return None

    @model_validator(mode="after")
    def _timings_make_sense(self) -> Self:
        if self.keepalive_interval_s >= self.fence_after_s:
            raise ValueError(
                f"keepalive_interval_s ({self.keepalive_interval_s}) must be below "
                f"fence_after_s ({self.fence_after_s})"
            )
        if self.fence_after_s >= self.lease_ttl_s:
            raise ValueError(
                f"fence_after_s ({self.fence_after_s}) must be below lease_ttl_s "
                f"({self.lease_ttl_s}): a node must fence itself before its lease can expire"
            )
        if self.recovery_margin_s <= self.evidence_interval_s:
            raise ValueError(
                f"recovery_margin_s ({self.recovery_margin_s}) must exceed evidence_interval_s "
                f"({self.evidence_interval_s})"
            )
        return self


# Timing profiles (docs/architecture.md, "Timing profiles"). ``default`` is the defaults
# above; ``fast`` halves the time to failover at the price of etcd load and of fencing a host
# that stalls for over about 0.7 s. Each keeps the rules of the validator: keepalive < fence_after <
# TTL, and the recovery margin above the evidence interval.
PROFILES: dict[str, dict[str, float]] = {
    "default": {
        "lease_ttl_s": 4.0,
        "keepalive_interval_s": 0.5,
        "fence_after_s": 3.0,
        "recovery_margin_s": 1.5,
        "expired_margin_s": 0.5,
        "evidence_interval_s": 1.0,
    },
    "fast": {
        "lease_ttl_s": 2.0,
        "keepalive_interval_s": 0.5,
        "fence_after_s": 1.5,
        "recovery_margin_s": 0.75,
        "expired_margin_s": 0.5,
        "evidence_interval_s": 0.5,
    },
}


# --- Changing the config (PATCH /cluster/config, hvc cluster config set) -------------------

# ``name`` is the cluster's key prefix in etcd: it is never changed by an edit.
FIXED = frozenset({"name"})

# What each agent reads once, when it starts: its lease is granted with the TTL, and its
# liveness (keepalives, watchdog deadlines, "is it me or etcd" evidence) runs on these. A
# change reaches an agent when it restarts; meanwhile the controller (which reads the config
# every cycle) waits as long as the node's own published timings need too
# (Node.fence_after_s and lease_ttl_s, scheduler/liveness.node_timings).
RESTART_NEEDED = frozenset(
    {"lease_ttl_s", "keepalive_interval_s", "fence_after_s", "evidence_interval_s"}
)


def settable_keys() -> frozenset[str]:
    """The dotted keys an admin may set (``migration.downtime_limit_ms``, ...)."""
    from hvcluster.models.settings import dotted_fields  # settings imports models.base only

    return frozenset(k for k, _ in dotted_fields(ClusterConfig) if k not in FIXED)


def safety_problems(config: ClusterConfig) -> list[tuple[str, str]]:
    """Rules a *new* config must keep beyond the model's own (which every stored config
    keeps: keepalive < fence_after < TTL, recovery margin above the evidence interval), as
    ``(field, why)``. Checked on a change only, so a config stored before a rule existed
    still reads (docs/architecture.md, "Safety" and "Timing profiles")."""
    problems = []
    if 2 * config.keepalive_interval_s > config.fence_after_s:
        problems.append(
            (
                "keepalive_interval_s",
                f"keepalive_interval_s ({config.keepalive_interval_s}) must be at most half of "
                f"fence_after_s ({config.fence_after_s}): with fewer than two keepalives in "
                "fence_after, one lost or late keepalive makes a node fence itself",
            )
        )
    if config.evidence_interval_s >= config.fence_after_s:
        problems.append(
            (
                "evidence_interval_s",
                f"evidence_interval_s ({config.evidence_interval_s}) must be below "
                f"fence_after_s ({config.fence_after_s}): evidence that etcd is out (Safety "
                "rule 5) must arrive before a node's watchdog fires, or an etcd outage "
                "fences every node",
            )
        )
    if config.expired_margin_s <= 0:
        problems.append(
            (
                "expired_margin_s",
                "expired_margin_s must be above 0: it is the time a watchdog's kill has to "
                "land before a node's VMs start elsewhere",
            )
        )
    return problems
