"""HA policies end to end, in an in-process cluster (real agents and controller, sim VMs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvcluster.models.config import QuarantineSettings
from hvcluster.models.lifecycle import NodeAdminState, VMState
from tests.sim.cluster import FAST, SimCluster

pytestmark = pytest.mark.timeout(90)


async def test_priorities_order_recovery_and_what_does_not_fit_is_left_failed(
    tmp_path: Path,
) -> None:
    cluster = SimCluster(tmp_path, cpus=2)
    try:
        await cluster.start("n1", "n2")
        await cluster.create_vm("base", ha={"preferred_owners": ["n2"]})
        await cluster.create_vm("hi", ha={"priority": "high", "preferred_owners": ["n1"]})
        await cluster.create_vm("lo", ha={"priority": "low", "preferred_owners": ["n1"]})
        for vm in ("base", "hi", "lo"):
            await cluster.wait_running(vm)
        assert await cluster.running_on("hi") == "n1" and await cluster.running_on("lo") == "n1"
        await cluster.crash("n1")
        assert await cluster.wait_running("hi", 20, not_on="n1") == "n2"

        async def lo_failed() -> bool:
            s = await cluster.status("lo")
            return s is not None and s.state is VMState.FAILED

        await cluster.wait_for(lo_failed, 10, "lo reported failed")
        assert await cluster.running_on("lo") is None
        failed = await cluster.event_list("vm.failed", "vm/lo")
        assert failed and "fit" in failed[-1].reason
    finally:
        await cluster.stop()


async def test_possible_owners_are_respected(cluster: SimCluster) -> None:
    await cluster.start("n1", "n2", "n3")
    await cluster.create_vm(
        "pinned", ha={"preferred_owners": ["n1"], "possible_owners": ["n1", "n2"]}
    )
    assert await cluster.wait_running("pinned") == "n1"
    await cluster.crash("n1")
    assert await cluster.wait_running("pinned", 20, not_on="n1") == "n2"
    await cluster.crash("n2")

    async def failed() -> bool:
        s = await cluster.status("pinned")
        return s is not None and s.state is VMState.FAILED

    await cluster.wait_for(failed, 20, "pinned left failed")
    assert await cluster.running_on("pinned") is None  # never on n3


async def test_hard_anti_affinity_is_never_violated(cluster: SimCluster) -> None:
    await cluster.start("n1", "n2")
    aa = {"anti_affinity_classes": ["db"], "anti_affinity_enforced": True}
    await cluster.create_vm("db-1", ha={**aa, "preferred_owners": ["n1"]})
    await cluster.create_vm("db-2", ha={**aa, "preferred_owners": ["n2"]})
    assert await cluster.wait_running("db-1") == "n1"
    assert await cluster.wait_running("db-2") == "n2"
    await cluster.crash("n2")

    async def reason() -> str:
        events = await cluster.event_list("vm.failed", "vm/db-2")
        return events[-1].reason if events else ""

    text = await cluster.wait_for(reason, 20, "db-2 left failed")
    assert "anti-affinity" in text
    assert await cluster.running_on("db-2") is None
    assert await cluster.running_on("db-1") == "n1"


async def test_failover_threshold_leaves_the_vm_failed(cluster: SimCluster) -> None:
    await cluster.start("n1", "n2", "n3")
    await cluster.create_vm("flaky", ha={"failover_threshold": 1, "preferred_owners": ["n1"]})
    assert await cluster.wait_running("flaky") == "n1"
    await cluster.crash("n1")
    second = await cluster.wait_running("flaky", 20, not_on="n1")
    await cluster.crash(second)

    async def left_failed() -> bool:
        s = await cluster.status("flaky")
        return s is not None and s.state is VMState.FAILED and s.left_failed

    await cluster.wait_for(left_failed, 20, "flaky left failed")
    events = await cluster.event_list("vm.failed", "vm/flaky")
    assert "threshold" in events[-1].reason or "failover" in events[-1].reason
    assert await cluster.placement("flaky") is None
    assert await cluster.running_on("flaky") is None


@pytest.mark.parametrize("mode", ["immediate", "never"])
async def test_failback(cluster: SimCluster, mode: str) -> None:
    await cluster.start("n1", "n2")
    await cluster.create_vm("home", ha={"preferred_owners": ["n1"], "failback": {"mode": mode}})
    assert await cluster.wait_running("home") == "n1"
    await cluster.crash("n1")
    assert await cluster.wait_running("home", 20, not_on="n1") == "n2"
    await cluster.start_node("n1")
    if mode == "immediate":
        assert await cluster.wait_running("home", 30, not_on="n2") == "n1"
        assert await cluster.event_list("vm.failback", "vm/home")
        placement = await cluster.placement("home")
        assert placement is not None and placement.epoch == 3  # 1 placed, 2 recovered, 3 moved back
    else:
        await cluster.wait_for(lambda: cluster.alive("n1"), 5, "n1 back")

        async def stays_on_n2() -> None:
            assert await cluster.running_on("home") == "n2"

        await cluster.decided(meanwhile=stays_on_n2)  # a whole cycle saw n1 back
        assert not await cluster.event_list("vm.failback", "vm/home")


async def test_quarantine_after_repeated_failures(tmp_path: Path) -> None:
    config = FAST.model_copy(update={"quarantine": QuarantineSettings(threshold=2)})
    cluster = SimCluster(tmp_path, config=config)
    try:
        await cluster.start("n1", "n2")
        for _ in range(2):
            await cluster.crash("n1")

            async def declared() -> int:
                return len(await cluster.event_list("node.dead", "node/n1"))

            before = await declared()
            await cluster.wait_for(lambda b=before: _more(declared, b), 20, "n1 declared dead")
            await cluster.start_node("n1")
        quarantined = await cluster.wait_for(
            lambda: cluster.event_list("node.quarantined", "node/n1"), 10, "quarantine"
        )
        assert "2" in quarantined[-1].reason
        await cluster.create_vm("new", ha={"preferred_owners": ["n1"]})
        assert await cluster.wait_running("new") == "n2"  # not on a quarantined node
        kv = await cluster.store.get(cluster.keys.node("n1"))
        assert kv is not None and NodeAdminState.QUARANTINED.value in kv.value.decode()
    finally:
        await cluster.stop()


async def _more(count: object, before: int) -> bool:
    return int(await count()) > before  # type: ignore[operator]


async def test_no_auto_start_vms_are_not_recovered(cluster: SimCluster) -> None:
    await cluster.start("n1", "n2")
    await cluster.create_vm("manual", ha={"priority": "no_auto_start", "preferred_owners": ["n1"]})
    assert await cluster.wait_running("manual") == "n1"
    await cluster.crash("n1")
    await cluster.wait_for(lambda: cluster.event_list("vm.failed", "vm/manual"), 20, "reason")
    assert await cluster.running_on("manual") is None


async def test_a_corrupt_value_is_reported_and_skipped(cluster: SimCluster) -> None:
    await cluster.start("n1", "n2")
    await cluster.store.put(cluster.keys.vm("broken"), b"{not json")
    await cluster.store.put(cluster.keys.placement("ok"), b"\xff\xfe")
    await cluster.create_vm("fine")
    await cluster.wait_running("fine")
    events = await cluster.wait_for(
        lambda: cluster.event_list("store.corrupt"), 10, "corrupt value reported"
    )
    assert any("broken" in e.subject for e in events)
    assert cluster.alive("n1") and cluster.alive("n2")


async def test_a_fence_agent_confirming_power_off_recovers_at_once(tmp_path: Path) -> None:
    marker = tmp_path / "fenced"
    config = FAST.model_copy(
        update={
            "fence_command": f"sh -c 'echo {{node}} > {marker}'",
            "fence_after_s": 1.4,
            "recovery_margin_s": 30.0,
        }  # without the fence agent: a long wait
    )
    cluster = SimCluster(tmp_path, config=config)
    try:
        await cluster.start("n1", "n2")
        await cluster.create_vm("web", ha={"preferred_owners": ["n2"]})
        assert await cluster.wait_running("web") == "n2"
        await cluster.crash("n2")
        assert await cluster.wait_running("web", 15, not_on="n2") == "n1"
        assert marker.read_text().strip() == "n2"
        fenced = await cluster.event_list("node.fenced", "node/n2")
        assert fenced and "confirmed" in fenced[0].reason
    finally:
        await cluster.stop()


async def test_a_paused_node_gets_no_new_vms(cluster: SimCluster) -> None:
    from hvcluster.models.base import decode, encode
    from hvcluster.models.node import Node

    await cluster.start("n1", "n2")
    kv = await cluster.store.get(cluster.keys.node("n1"))
    assert kv is not None
    node = decode(Node, kv.key, kv.value)
    await cluster.store.put(
        kv.key, encode(node.model_copy(update={"admin_state": NodeAdminState.PAUSED}))
    )
    for i in range(3):
        await cluster.create_vm(f"v{i}", ha={"preferred_owners": ["n1"]})
    for i in range(3):
        assert await cluster.wait_running(f"v{i}") == "n2"


async def test_a_vm_that_keeps_crashing_is_restarted_locally_then_left_failed(
    cluster: SimCluster,
) -> None:
    await cluster.start("n1", "n2")
    await cluster.create_vm("crashy", ha={"possible_owners": ["n1"]})
    assert await cluster.wait_running("crashy") == "n1"
    driver = cluster.drivers["n1"]
    threshold = FAST.local_restart_threshold
    for i in range(threshold + 1):
        driver.inject_crash("crashy")

        async def restarted(n: int = i) -> bool:
            s = await cluster.status("crashy")
            return s is not None and (s.restarts > n or s.state is VMState.FAILED)

        await cluster.wait_for(restarted, 10, f"crash {i + 1} handled")
        if i < threshold:
            await cluster.wait_running("crashy")
    status = await cluster.wait_for(
        lambda: _failed_status(cluster, "crashy"), 10, "crashy left failed"
    )
    assert "crashed" in status.last_error
    assert await cluster.event_list("vm.restarted", "vm/crashy")


async def _failed_status(cluster: SimCluster, vm: str) -> object:
    s = await cluster.status(vm)
    return s if s is not None and s.state is VMState.FAILED else None
