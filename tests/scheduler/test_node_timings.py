"""A node's own timings (published by its agent) lengthen the controller's wait when the
cluster config's changed since the agent started: its watchdog still fires on the old ones."""

from __future__ import annotations

import dataclasses

from hvcluster.models.config import ClusterConfig
from hvcluster.scheduler.liveness import Liveness, assess, expired_wait
from hvcluster.scheduler.snapshot import ClusterSnapshot, NodeView
from tests.scheduler.factory import NOW, node

FAST = ClusterConfig.with_profile("fast")  # fence_after 1.5 s, TTL 2 s, margin 0.75 s


def gone(published_fence_after: float, published_ttl: float, expired: bool = False) -> NodeView:
    view = node("n1", alive=False, gone_since=NOW)
    spec = view.node.model_copy(
        update={"fence_after_s": published_fence_after, "lease_ttl_s": published_ttl}
    )
    return dataclasses.replace(view, node=spec, expired=expired)


def health(view: NodeView, after: float) -> Liveness:
    snapshot = ClusterSnapshot(now=NOW + after, config=FAST, nodes={"n1": view, **_others()})
    return assess(snapshot)["n1"].liveness


def _others() -> dict[str, NodeView]:
    # enough live nodes that one gone is no mass failure
    return {f"n{i}": node(f"n{i}") for i in range(2, 6)}


def test_an_agent_on_older_longer_timings_is_waited_for() -> None:
    old = gone(3.0, 4.0)  # its agent started when fence_after was 3 s
    assert health(old, 1.5 + 0.75 + 0.1) is Liveness.SUSPECT  # the config's wait has passed
    assert health(old, 3.0 + 0.75 - 0.05) is Liveness.SUSPECT
    assert health(old, 3.0 + 0.75 + 0.05) is Liveness.DEAD
    why = assess(ClusterSnapshot(now=NOW + 1, config=FAST, nodes={"n1": old, **_others()}))
    assert "agent has not restarted" in why["n1"].why


def test_unreported_or_shorter_timings_change_nothing() -> None:
    for view in (gone(0.0, 0.0), gone(1.0, 2.0)):
        assert health(view, 1.5 + 0.75 - 0.05) is Liveness.SUSPECT
        assert health(view, 1.5 + 0.75 + 0.05) is Liveness.DEAD


def test_a_lease_run_out_waits_for_the_nodes_own_watchdog() -> None:
    assert expired_wait(FAST) == 0.5 + 0.5
    # fence_after 3 s on a lease of 2 s (adopted from before, or the config's shorter TTL):
    # the key may go 1 s after the last keepalive, the watchdog fires 2 s after that
    old = gone(3.0, 4.0, expired=True)
    assert expired_wait(FAST, old) == (3.0 - (2.0 - 1.0)) + 0.5
    assert health(old, 2.5 - 0.05) is Liveness.SUSPECT
    assert health(old, 2.5 + 0.05) is Liveness.DEAD
