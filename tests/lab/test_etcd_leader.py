"""An etcd leader change costs the nodes nothing, even on the fast profile (fence_after 1.5 s,
keepalive 0.5 s): the lab's members elect a new leader in a few hundred milliseconds
(heartbeat 25 ms, election timeout 250 ms: ``lab/members.py``), well inside what a node
lives on after its last confirmed keepalive. The leader frozen (SIGSTOP) for longer than the
election timeout, or killed and started again: no fence, no move, no restart, no node
re-registered. A frozen leader leaves no evidence for Safety rule 5 (the others still name
it until their election timeout), so only the election's speed carries the nodes; each round
prints how long the new leader took and the longest a node went without a confirmed
keepalive."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from hvcluster.lab import faults
from hvcluster.models.config import ClusterConfig
from tests.lab.conftest import Lab, wait_for
from tests.lab.test_etcd_outage import (
    NEVER,
    NODES,
    alive_nodes,
    etcd_leader,
    events_since,
    host_processes,
    last_seq,
    outage_lab,
    why,
)
from tests.lab.test_stalls import GAP, agent_log, watchdog_decided

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]
ROUNDS = 3  # of each fault
FROZEN_S = 1.0  # four election timeouts: an election surely happens


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from outage_lab(tmp_path_factory.mktemp("leader-lab"), ClusterConfig.with_profile("fast"))


def new_leader(lab: Lab, old: str, began: float) -> float:
    """Seconds from ``began`` until a member other than ``old`` leads."""
    wait_for(lambda: (etcd_leader(lab) or old) != old, 30, f"a leader other than {old}")
    return time.monotonic() - began


def gaps(lab: Lab) -> dict[str, int]:
    """How many gap lines each agent logged so far."""
    return {n: len(GAP.findall(agent_log(lab, n))) for n in NODES}


def longest_gap(lab: Lab, since: dict[str, int]) -> float:
    return max(
        (float(g) for n in NODES for g in GAP.findall(agent_log(lab, n))[since[n] :]),
        default=0.0,
    )


@pytest.mark.parametrize("how", ["frozen", "killed"])
def test_an_etcd_leader_change_fences_nobody_on_the_fast_profile(lab: Lab, how: str) -> None:
    state = lab.state
    fence_after = state.fence_after_s
    assert fence_after == ClusterConfig.with_profile("fast").fence_after_s
    wait_for(lambda: alive_nodes(lab) == list(NODES), 60, "every node alive")
    before = host_processes(lab)
    assert all(len(where) == 1 for where in before.values()), before
    seq = last_seq(lab)
    done = []
    for i in range(ROUNDS):
        leader = wait_for(lambda: etcd_leader(lab), 30, "an etcd leader")
        logged = gaps(lab)
        began = time.monotonic()
        if how == "frozen":
            faults.fault(lab.state, "etcd-stop", leader, record=False)
            try:
                took = new_leader(lab, leader, began)
                time.sleep(max(0.0, FROZEN_S - (time.monotonic() - began)))
            finally:
                faults.fault(lab.state, "etcd-cont", leader, record=False)
        else:
            faults.fault(lab.state, "etcd-kill", leader, record=False)
            try:
                took = new_leader(lab, leader, began)
            finally:
                faults.fault(lab.state, "etcd-start", leader, record=False)
        watchdog_decided(began, fence_after)
        gap = longest_gap(lab, logged)
        done.append(f"{leader} {how}: new leader after {took:.2f}s, gap {gap:.2f}s")
        now = host_processes(lab)
        assert now == before, f"round {i + 1} ({done[-1]}): {now}{why(lab)}"
    wait_for(lambda: alive_nodes(lab) == list(NODES), 30, "every node alive after")
    events = events_since(lab, seq)
    assert not [e for e in events if e["kind"] in NEVER], (done, events)
    lost = [e for e in events if e["kind"] in ("node.lease_lost", "node.registered")]
    assert not lost, (done, lost)
    print(f"\nleader {how}, fast profile (fence_after {fence_after}s): " + "; ".join(done))
