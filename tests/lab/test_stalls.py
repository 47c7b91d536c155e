"""No false failover (Safety rule 2): 20 stalls, each a node's link to etcd cut (its packets
dropped) or its agent frozen (SIGSTOP), each shorter than what rule 2 promises to survive:
0 fences, 0 moves, 0 restarts. With the default and the fast profile.

What rule 2 promises: the watchdog's deadline is when the last *confirmed* keepalive was sent
+ ``fence_after``. A stall that begins just before a keepalive is due began up to one
keepalive interval after the last confirmed one was sent, and the first keepalive after it
must still be sent, answered and fed before that deadline. So a stall is survived for sure
only when shorter than ``fence_after - keepalive interval - a round trip``: 2 s less a round
trip with the default timings (3 s - 1 s), 1 s less one with the fast ones (1.5 s - 0.5 s). A
2 s stall is borderline: it may fence, as the rules allow. A cut link costs more than its
length: TCP retransmits what was lost after 0.2 s, then 0.4 s, 0.8 s later (Linux's minimum
RTO, doubling), so the first keepalive after a cut of 1 s arrives up to 1.4 s after the cut
began. Hence the lengths below: frozen agents up to fence_after - interval - 0.5 s, cut links
up to fence_after - interval - 1 s (default) or - 0.6 s (fast), with at least 0.6 s to spare
for a round trip on this loaded machine."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest

from hvcluster.lab import faults
from hvcluster.models.config import ClusterConfig
from tests.lab.conftest import Lab, make_lab, wait_for
from tests.lab.test_etcd_outage import (
    NEVER,
    NODES,
    VMS,
    alive_nodes,
    events_since,
    host_processes,
    last_seq,
    running_once,
    why,
)

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]
STALLS = 20
# (frozen agent, cut link) stall lengths in seconds, per profile: see the module's docstring
LENGTHS = {"default": ((0.5, 1.5), (0.5, 1.0)), "fast": ((0.2, 0.5), (0.2, 0.4))}
WATCHDOG_MARGIN_S = 0.3  # its 50 ms look, a SIGKILL, and this machine's load


@pytest.fixture(scope="module", params=sorted(LENGTHS))
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    profile = request.param
    config = ClusterConfig.with_profile(profile)
    tmp = tmp_path_factory.mktemp(f"stall-lab-{profile}")
    labs = make_lab(tmp, "sim", network="netns", etcd=1, config=config)
    lab = next(labs)
    try:
        for vm, node in VMS.items():
            lab.post("/vms", {"name": vm, "memory_mib": 64, "ha": {"preferred_owners": [node]}})
        for vm in VMS:
            wait_for(lambda vm=vm: running_once(lab, vm), 60, f"{vm} running")  # type: ignore[misc]
        yield lab
    finally:
        labs.close()


def stall(lab: Lab, node: str, kind: str, seconds: float) -> float:
    """One stall of ``node``, exactly ``seconds`` long (nothing recorded in between); when
    it began (monotonic: the clock the watchdog's deadlines are on)."""
    state = lab.state
    began = time.monotonic()
    if kind == "frozen":
        faults.delay(state, node, round(seconds * 1000))
        return began
    faults.fault(state, "partition", node, source="etcd", record=False)
    try:
        time.sleep(seconds)
    finally:
        faults.fault(state, "heal", node, record=False)
    return began


def watchdog_decided(began: float, fence_after: float) -> None:
    """Positive evidence that the watchdog has judged a stall that began at ``began``: the
    deadline it held then came from a keepalive sent before, so it is at most ``began +
    fence_after``; by then the agent's next confirmed keepalive has moved it on or the
    watchdog has killed (it looks every 50 ms; WATCHDOG_MARGIN_S covers that and the kill)."""
    decided = began + fence_after + WATCHDOG_MARGIN_S
    wait_for(lambda: time.monotonic() >= decided, fence_after + 30, "the watchdog's deadline")


def test_stalls_shorter_than_fence_after_fence_nothing_and_move_nothing(lab: Lab) -> None:
    profile = lab.state.profile
    frozen, cut = LENGTHS[profile]
    rng = random.Random(f"stalls-{profile}")
    wait_for(lambda: alive_nodes(lab) == list(NODES), 60, "every node alive")
    before = host_processes(lab)
    assert all(len(where) == 1 for where in before.values()), before
    seq = last_seq(lab)
    done = []
    for i in range(STALLS):
        kind = "frozen" if i % 2 == 0 else "cut"
        low, high = frozen if kind == "frozen" else cut
        seconds = round(rng.uniform(low, high), 2)
        node = rng.choice(NODES)
        began = stall(lab, node, kind, seconds)
        done.append(f"{node} {kind} {seconds}s")
        watchdog_decided(began, ClusterConfig.with_profile(profile).fence_after_s)
        now = host_processes(lab)  # then look: nothing killed
        assert now == before, f"after stall {i + 1} ({done[-1]}): {now}{why(lab)}"
    wait_for(lambda: alive_nodes(lab) == list(NODES), 30, "every node alive after")
    events = events_since(lab, seq)
    assert not [e for e in events if e["kind"] in NEVER], (done, events)
    lost = [e for e in events if e["kind"] in ("node.lease_lost", "node.registered")]
    assert not lost, (done, lost)
    print(f"\n{profile}: {STALLS} stalls, none fenced: {', '.join(done)}")
