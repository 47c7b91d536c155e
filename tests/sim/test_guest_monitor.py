"""Guest monitoring's policy (models/vm.GuestMonitor) end to end in an in-process cluster on
a manual clock: a guest that panics or stops answering its heartbeat is failed by its driver,
restarted on its node up to the local restart threshold, then moved; events name the cause.
The sim driver fakes the signals (inject_guest_panic/_hang) with the qemu driver's reasons."""

from __future__ import annotations

import pytest

from hvcluster.models.lifecycle import VMState
from tests.sim.cluster import FAST, SimCluster

pytestmark = pytest.mark.timeout(90)

HA = {"preferred_owners": ["n1"], "possible_owners": ["n1", "n2"]}


async def _restarts(cluster: SimCluster, vm: str) -> int:
    s = await cluster.status(vm)
    return s.restarts if s is not None and s.node == "n1" else -1


async def _fail_until_moved(cluster: SimCluster, vm: str, fail: str) -> None:
    """Fail ``vm``'s guest on n1 (``fail``: panic|hang) until its restarts there run out; it
    then runs on n2."""
    driver = cluster.drivers["n1"]
    threshold = FAST.local_restart_threshold
    for i in range(threshold + 1):
        pid = (await cluster.status(vm)).pid  # type: ignore[union-attr]
        if fail == "panic":
            driver.inject_guest_panic(vm)
        else:
            driver.inject_guest_hang(vm)

        async def handled(n: int = i, pid: int | None = pid) -> bool:
            s = await cluster.status(vm)
            return s is not None and (s.node != "n1" or s.restarts > n or s.pid != pid)

        await cluster.wait_for(handled, 60, f"guest failure {i + 1} of {vm} handled")
        if i < threshold:
            assert await cluster.wait_running(vm) == "n1"
            assert await _restarts(cluster, vm) == i + 1
    assert await cluster.wait_running(vm, 30, not_on="n1") == "n2"


async def test_a_panicking_guest_is_restarted_on_its_node_then_moved(cluster: SimCluster) -> None:
    await cluster.start("n1", "n2")
    await cluster.create_vm("pan", ha=HA, monitor={"panic": True})
    assert await cluster.wait_running("pan") == "n1"
    await _fail_until_moved(cluster, "pan", "panic")
    restarted = await cluster.event_list("vm.restarted", "vm/pan")
    assert len(restarted) == FAST.local_restart_threshold
    assert all("guest panicked" in e.reason for e in restarted)
    failed = await cluster.event_list("vm.failed", "vm/pan")
    assert failed and "guest panicked" in failed[0].reason
    status = await cluster.status("pan")
    assert status is not None and status.state is VMState.RUNNING and status.restarts == 0


async def test_a_hung_guest_is_restarted_after_its_timeout_then_moved(
    cluster: SimCluster,
) -> None:
    await cluster.start("n1", "n2")
    await cluster.create_vm("hang", ha=HA, monitor={"heartbeat_timeout_s": 20})
    assert await cluster.wait_running("hang") == "n1"
    before = await cluster.status("hang")
    assert before is not None
    cluster.drivers["n1"].inject_guest_hang("hang")
    hung_at = cluster.now()
    # Not before its timeout: 15 s on, the same guest still runs.
    await cluster.wait_for(lambda: cluster.now() - hung_at >= 15, 20, "15 s passing")
    assert await cluster.status("hang") == before
    await _fail_until_moved_after_first(cluster, "hang", hung_at)
    restarted = await cluster.event_list("vm.restarted", "vm/hang")
    assert restarted and all("no heartbeat for 20s" in e.reason for e in restarted)
    first = restarted[0].time - hung_at
    assert 20 <= first <= 25, f"restarted {first:.1f} s after the guest hung"


async def _fail_until_moved_after_first(cluster: SimCluster, vm: str, hung_at: float) -> None:
    """The hang already injected is the first failure: wait for its restart, then go on."""

    async def restarted() -> bool:
        return await _restarts(cluster, vm) == 1

    await cluster.wait_for(restarted, 30, f"{vm} restarted after its hang")
    assert cluster.now() - hung_at >= 20
    driver = cluster.drivers["n1"]
    for i in range(1, FAST.local_restart_threshold + 1):
        assert await cluster.wait_running(vm) == "n1"
        driver.inject_guest_hang(vm)

        async def handled(n: int = i) -> bool:
            s = await cluster.status(vm)
            return s is not None and (s.node != "n1" or s.restarts > n)

        await cluster.wait_for(handled, 60, f"hang {i + 1} of {vm} handled")
    assert await cluster.wait_running(vm, 30, not_on="n1") == "n2"


async def test_an_unmonitored_guest_that_panics_or_hangs_runs_on(cluster: SimCluster) -> None:
    await cluster.start("n1", "n2")
    await cluster.create_vm("plain", ha=HA)
    assert await cluster.wait_running("plain") == "n1"
    before = await cluster.status("plain")
    cluster.drivers["n1"].inject_guest_panic("plain")
    start = cluster.now()
    await cluster.wait_for(lambda: cluster.now() - start >= 120, 130, "two minutes passing")
    assert await cluster.status("plain") == before
    assert not await cluster.event_list("vm.restarted", "vm/plain")
