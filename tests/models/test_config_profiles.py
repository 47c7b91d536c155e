"""Timing profiles: presets a lab or a real cluster's bootstrap picks by name."""

from __future__ import annotations

import pytest

from hvcluster.models.config import PROFILES, ClusterConfig


def test_the_default_profile_is_the_defaults() -> None:
    assert ClusterConfig.with_profile("default") == ClusterConfig()
    assert ClusterConfig().profile() == "default"


def test_the_fast_profile_has_the_issue_timings_and_keeps_the_rules() -> None:
    fast = ClusterConfig.with_profile("fast", name="prod")
    assert (fast.lease_ttl_s, fast.fence_after_s, fast.keepalive_interval_s) == (2.0, 1.5, 0.5)
    assert fast.name == "prod" and fast.profile() == "fast"
    assert fast.recovery_margin_s > fast.evidence_interval_s
    assert ClusterConfig.with_profile("fast", fence_after_s=1.2).profile() is None


def test_an_unknown_profile_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"'slow'.*default or fast"):
        ClusterConfig.with_profile("slow")
    assert set(PROFILES) == {"default", "fast"}
