"""Cluster settings, stored at ``config``. Defaults are those of ARCHITECTURE.md."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from hvcluster.models.base import Model
from hvcluster.models.storage import normal_dir, system_dir_problem


class MigrationSettings(Model):
    max_bandwidth_mib_s: int = Field(default=10_000, gt=0)  # QEMU's default cap is far too low
    downtime_limit_ms: int = Field(default=300, gt=0)
    auto_converge: bool = True
    xbzrle: bool = False
    multifd: bool = False
    postcopy: bool = False
    max_parallel_per_node: int = Field(default=2, ge=1)
    timeout_s: float = Field(default=600.0, gt=0)
    # A drained VM whose live migration failed (or that cannot move live): "quick" tries a
    # quick migration (save state, restore on the target), "stay" leaves it, with the reason.
    drain_fallback: Literal["quick", "stay"] = "quick"


class QuarantineSettings(Model):
    """WSFC's defaults: a node that failed 3 times in an hour is kept out for 2 hours."""

    threshold: int = Field(default=3, ge=1)
    period_s: float = Field(default=3600.0, gt=0)
    duration_s: float = Field(default=7200.0, gt=0)


class ClusterConfig(Model):
    name: str = "hvc"
    lease_ttl_s: float = Field(default=4.0, gt=0)
    keepalive_interval_s: float = Field(default=1.0, gt=0)
    fence_after_s: float = Field(default=3.0, gt=0)
    # Wait this much beyond fence_after before moving a dead node's VMs; must exceed the
    # interval at which an agent re-checks its "is it me or etcd" evidence.
    recovery_margin_s: float = Field(default=1.5, ge=0)
    # When the controller watched a dead node's lease run out (rather than vanish early, as
    # a revoked one does), the node went a whole TTL without a keepalive reaching etcd, so
    # its watchdog fired (fence_after < TTL) before the key went: recover after only this
    # margin (for the watchdog's kill to land).
    expired_margin_s: float = Field(default=0.5, ge=0)
    evidence_interval_s: float = Field(default=1.0, gt=0)
    # More than this fraction of nodes vanishing at once is a control-plane event.
    mass_failure_fraction: float = Field(default=0.5, gt=0, le=1)
    mass_failure_grace_s: float = Field(default=30.0, ge=0)
    local_restart_threshold: int = Field(default=3, ge=0)
    local_restart_period_s: float = Field(default=900.0, gt=0)
    start_group_delay_s: float = Field(default=30.0, ge=0)
    # A command that powers a node off and exits 0 once it is confirmed off ("{node}" is
    # replaced by the node's name; IPMI or Redfish tools fit here). Empty: no fence agent.
    fence_command: str = ""
    fence_timeout_s: float = Field(default=30.0, gt=0)
    # Records that grow with use, kept by count and by age (the leader prunes them): the
    # cluster log's newest events, and each of finished migrations and storage moves.
    event_retention: int = Field(default=10_000, ge=100)
    event_max_age_s: float = Field(default=30 * 86400.0, gt=0)
    max_migration_records: int = Field(default=2_000, ge=10)
    migration_retention_s: float = Field(default=7 * 86400.0, gt=0)
    migration: MigrationSettings = MigrationSettings()
    quarantine: QuarantineSettings = QuarantineSettings()
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
