"""No false failover (Safety rule 2): 20 stalls, each a node's link to etcd cut (its packets
dropped) or its agent frozen (SIGSTOP), each shorter than what rule 2 promises to survive:
0 fences, 0 moves, 0 restarts. With the default and the fast profile.

What rule 2 promises (docs/architecture.md, "Stalls"): the watchdog's deadline is when the
last *confirmed* keepalive was sent + ``fence_after``. A stall that begins just before a
keepalive is due began up to one keepalive interval after that, and the first keepalive after
it must still reach etcd and be answered before the deadline: a stall is survived when
``stall + keepalive interval + reconnect < fence_after``. A frozen agent reconnects in a round
trip; after a cut link, a keepalive dials again beside a dial still connecting every 0.1 s
(store/etcd_endpoint.py), so reconnect is about 0.1 s and a handshake. So, default
(keepalive 0.5 s, fence_after 3 s): frozen and cut 0.5 to 2 s (0.4 s to spare for a cut: the
lab's cut also lasts as long as its nft command takes). Fast (0.5 s, 1.5 s): frozen up to
0.7 s, cut up to 0.4 s. The stalls run one after another, never two at once; each node's
is judged after its deadline (before that node stalls again), while the next ones run on
the other nodes. Each stall prints how long its node then went
without a confirmed keepalive (gaps under 1.5 intervals are not logged: 0)."""

from __future__ import annotations

import random
import re
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
LENGTHS = {"default": ((0.5, 2.0), (0.5, 2.0)), "fast": ((0.2, 0.7), (0.2, 0.4))}
GAP = re.compile(r"keepalive confirmed again ([0-9.]+)s after")
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
    """The stalls follow one another at once, never two at a time; a node's watchdog is
    judged (its deadline passed, then the hosts' processes looked at) before that node stalls
    again, and every other node's while the next stalls run: each stall still gets its whole
    ``fence_after`` and is judged alone on its node, without the run waiting out every
    deadline in turn (66 s to about 30 s on the default profile)."""
    profile = lab.state.profile
    config = ClusterConfig.with_profile(profile)
    frozen, cut = LENGTHS[profile]
    rng = random.Random(f"stalls-{profile}")
    plan = [("frozen", x) for x in spread(*frozen)] + [("cut", x) for x in spread(*cut)]
    rng.shuffle(plan)
    wait_for(lambda: alive_nodes(lab) == list(NODES), 60, "every node alive")
    before = host_processes(lab)
    assert all(len(where) == 1 for where in before.values()), before
    seq = last_seq(lab)
    started = time.monotonic()
    done: list[str] = []
    pending: dict[str, tuple[int, float, int]] = {}  # node: (stall, began, gaps logged before)
    last = ""

    def judge(node: str) -> None:
        """Wait for the watchdog of ``node`` to have judged its last stall; then look."""
        i, began, logged = pending.pop(node)
        watchdog_decided(began, config.fence_after_s)
        gap = max((float(g) for g in GAP.findall(agent_log(lab, node))[logged:]), default=0.0)
        done[i] += f" (gap {gap:.2f}s)"
        now = host_processes(lab)  # then look: nothing killed
        assert now == before, f"after stall {i + 1} ({done[i]}; all: {done}): {now}{why(lab)}"

    for i, (kind, seconds) in enumerate(plan):
        # Another node than the last stalled: its deadline is judged while this one stalls.
        node = last = rng.choice([n for n in NODES if n != last])
        if node in pending:
            judge(node)
        logged = len(GAP.findall(agent_log(lab, node)))
        pending[node] = (i, stall(lab, node, kind, seconds), logged)
        done.append(f"{node} {kind} {seconds}s")
    for node in sorted(pending, key=lambda n: pending[n][1]):
        judge(node)
    wait_for(lambda: alive_nodes(lab) == list(NODES), 30, "every node alive after")
    events = events_since(lab, seq)
    assert not [e for e in events if e["kind"] in NEVER], (done, events)
    lost = [e for e in events if e["kind"] in ("node.lease_lost", "node.registered")]
    assert not lost, (done, lost)
    took = time.monotonic() - started
    print(f"\n{profile}, fence_after {config.fence_after_s}s: {STALLS} stalls in {took:.0f} s")
    print(
        "  none fenced; longest without a confirmed keepalive (gap), by stall: " + ", ".join(done)
    )


def spread(low: float, high: float) -> list[float]:
    """Half the stalls' lengths, evenly from ``low`` to ``high`` (both tried)."""
    n = STALLS // 2
    return [round(low + (high - low) * k / (n - 1), 2) for k in range(n)]


def agent_log(lab: Lab, node: str) -> str:
    """What the agent of ``node`` logged so far."""
    return (lab.dir / "nodes" / node / "agent.log").read_text(errors="replace")
