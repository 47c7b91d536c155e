"""etcd outages that look like a cut link (Safety rules 2 and 5): the etcd leader and a
follower frozen (SIGSTOP), or a node cut off from every member while etcd has no quorum. A
frozen member may be a leader that revokes every expired lease the moment it resumes, and a
timeout cannot tell it from a dead link, so the nodes that lost etcd fence themselves. No VM
ever runs twice, none moves while etcd has no quorum, and every VM runs again once quorum
returns, on its own node (which is back). Measured: how long fencing and the return took
(printed; run with -s)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from hvcluster.lab import faults, processes
from hvcluster.models.config import ClusterConfig
from tests.lab.conftest import Lab, wait_for
from tests.lab.test_etcd_outage import (
    NODES,
    OUTAGE_S,
    VMS,
    alive_nodes,
    etcd_leader,
    events_since,
    last_seq,
    outage_lab,
    placed,
    running_once,
    why,
)

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]
MOVES = {"vm.recovered", "vm.moved"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from outage_lab(tmp_path_factory.mktemp("frozen-lab"))


def all_home(lab: Lab) -> bool:
    """Every VM runs once, on its own node, where its status and placement say."""
    return all(
        (where := running_once(lab, vm)) is not None and where[0] == home
        for vm, home in VMS.items()
    )


def ready(lab: Lab) -> dict[str, int]:
    """Every node alive and every VM at home; the placement epochs."""
    wait_for(lambda: alive_nodes(lab) == list(NODES), 60, "every node alive before")
    wait_for(lambda: all_home(lab), 60, "every VM running at home before")
    return {vm: placed(lab, vm)[1] for vm in VMS}  # type: ignore[index]


def watch(lab: Lab, seconds: float, start: float, fenced: set[str]) -> dict[str, float]:
    """For ``seconds``: no VM ever runs twice nor anywhere but at home; when the VM of each
    node in ``fenced`` was first seen gone (seconds since ``start``). Each VM of the other
    nodes must run all along."""
    gone: dict[str, float] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for vm, home in VMS.items():
            found = faults.find_vm(lab.state, vm)
            assert len(found) <= 1, f"{vm} runs twice: {found}"
            assert all(node == home for node, _ in found), f"{vm} moved: {found}"
            if home in fenced and not found:
                gone.setdefault(vm, time.monotonic() - start)
            assert home in fenced or found, f"{vm} was killed on {home}{why(lab)}"
        time.sleep(0.1)
    return gone


def back_home(lab: Lab, epochs: dict[str, int], since: float, seq: int, fenced: set[str]) -> float:
    """Wait until every VM runs at home again, at the same epoch; no move in the log; every
    node said how it came back (registered anew, or its lease lived); the seconds since
    ``since``."""
    wait_for(lambda: alive_nodes(lab) == list(NODES), 60, "every node alive after quorum")
    wait_for(lambda: all_home(lab), 60, "every VM running at home after quorum")
    took = time.monotonic() - since
    assert {vm: placed(lab, vm)[1] for vm in VMS} == epochs  # type: ignore[index]
    events = events_since(lab, seq)
    assert not [e for e in events if e["kind"] in MOVES], events

    def said() -> bool:
        back = {"node.registered", "node.etcd_back", "node.rejoined"}
        subjects = {e["subject"] for e in events_since(lab, seq) if e["kind"] in back}
        return subjects >= {f"node/{n}" for n in fenced}

    wait_for(said, 30, "the fenced nodes saying they are back")
    return took


def test_leader_and_a_follower_frozen_fence_every_node_and_all_come_back_home(lab: Lab) -> None:
    epochs = ready(lab)
    leader = wait_for(lambda: etcd_leader(lab), 30, "an etcd leader")
    follower = next(m.name for m in lab.state.etcd_members if m.name != leader)
    seq = last_seq(lab)
    start = time.monotonic()
    try:
        lab.fault("etcd-stop", leader)
        # recording that fault waits for a new leader (quorum is still there): meanwhile
        # keepalives reach the others, so the fence counts from the second freeze
        second = time.monotonic()
        lab.fault("etcd-stop", follower)
        gone = watch(lab, OUTAGE_S, start, fenced=set(NODES))
    finally:
        lab.fault("etcd-cont", follower)
        lab.fault("etcd-cont", leader)
    resumed = time.monotonic()
    assert set(gone) == set(VMS), f"not every node fenced: {gone}{why(lab)}"
    took = back_home(lab, epochs, resumed, seq, set(NODES))
    fenced = ", ".join(f"{t:.1f}s" for t in gone.values())
    print(
        f"\nfrozen leader+follower: VMs fenced after {fenced}; "
        f"all running at home {took:.1f}s after the members resumed"
    )
    # + a keepalive interval, the kill, the probe
    limit = second - start + lab.state.fence_after_s + 2.0
    assert max(gone.values()) <= limit, (gone, f"second freeze after {second - start:.1f}s")


def test_a_node_cut_off_while_etcd_has_no_quorum_fences_alone(lab: Lab) -> None:
    """Two members crashed (no quorum: the nodes live on the refusals), and n3 cut off from
    every member: n3 has no evidence and fences; n1 and n2 keep their VMs; nothing moves.
    n3 healed, members started: every VM at home again."""
    epochs = ready(lab)
    seq = last_seq(lab)
    try:
        lab.fault("etcd-kill", "etcd0")
        lab.fault("etcd-kill", "etcd1")
        cut = time.monotonic()  # the fault's event waits for quorum after the cut: time first
        lab.fault("partition", "n3", source="etcd")
        gone = watch(lab, OUTAGE_S, cut, fenced={"n3"})
    finally:
        lab.fault("heal", "n3")
        for member in ("etcd0", "etcd1"):
            lab.fault("etcd-start", member)
    quorum = time.monotonic()
    assert set(gone) == {"out-n3"}, f"n3 did not fence: {gone}{why(lab)}"
    took = back_home(lab, epochs, quorum, seq, {"n3"})
    print(
        f"\nn3 cut off without quorum: fenced {gone['out-n3']:.1f}s after the cut; "
        f"all at home {took:.1f}s after the restarts"
    )
    # the last evidence before the cut may say nobody leads (etcd2 answers with no leader):
    # it feeds a TTL from when it was asked, up to half an evidence interval before the cut
    config = ClusterConfig.with_profile(lab.state.profile)
    assert gone["out-n3"] <= config.lease_ttl_s + config.evidence_interval_s + 1.0, gone


def test_members_restarted_one_by_one_after_all_crashed_never_run_a_vm_twice(lab: Lab) -> None:
    """All three members crashed, then started one after another (each ``etcd-start`` waits
    up to 5 s for a leader). From when the second listens, the nodes live on fence_after
    only (a restarting member is no evidence), and etcd may take longer to serve again:
    nodes may fence, as rule 5 says. Whatever happens: no VM ever runs twice or moves, and
    every VM runs at home again once quorum is back."""
    epochs = ready(lab)
    seq = last_seq(lab)
    members = ["etcd0", "etcd1", "etcd2"]
    restarts = threading.Thread(target=lambda: None)
    try:
        for member in members:
            lab.fault("etcd-kill", member)
        watch(lab, 5.0, time.monotonic(), fenced=set())  # refusals: every VM runs on

        def restart() -> None:
            for member in members:
                lab.fault("etcd-start", member)

        restarts = threading.Thread(target=restart)
        started = time.monotonic()
        restarts.start()
        gone = watch(lab, 20.0, started, fenced=set(NODES))
    finally:
        restarts.join(60)
        for member in members:  # whatever failed above: every member runs again
            if not processes.alive(lab.state.member(member).pid):
                lab.fault("etcd-start", member)
    took = back_home(lab, epochs, time.monotonic(), seq, set())
    fenced = ", ".join(f"{vm} {t:.1f}s" for vm, t in gone.items()) or "none"
    print(f"\nmembers restarted one by one: fenced {fenced} (after the first restart)")
    assert took < 60


def test_one_follower_frozen_fences_nobody(lab: Lab) -> None:
    """Each follower frozen in turn for longer than ``fence_after`` (so whichever one the
    agents talk to is frozen once): etcd keeps quorum and its leader, each keepalive that
    times out on the frozen member goes to another next: no node fences, nothing moves.
    (Found by ``hvc lab chaos``: nodes stayed on a frozen member and fenced themselves.) A
    frozen *leader* costs an election too (1-2 s with etcd's defaults): see the limits of
    Safety rule 5 in docs/architecture.md."""
    epochs = ready(lab)
    seq = last_seq(lab)
    leader = wait_for(lambda: etcd_leader(lab), 30, "an etcd leader")
    hold = lab.state.fence_after_s + 4.0
    for member in [m.name for m in lab.state.etcd_members if m.name != leader]:
        start = time.monotonic()
        try:
            lab.fault("etcd-stop", member)
            watch(lab, hold, start, fenced=set())  # every VM runs all along, at home
        finally:
            lab.fault("etcd-cont", member)
        ready(lab)
    assert {vm: placed(lab, vm)[1] for vm in VMS} == epochs  # type: ignore[index]
    assert not [e for e in events_since(lab, seq) if e["kind"] in MOVES]
