"""A bug in one job fails that job only: an unexpected exception (the sim driver's injected
``RuntimeError``, see :mod:`hvcluster.drivers.sim.faults`) in a migration or a storage move
fails its record once, with the reason and an event; the agent keeps running, the VM keeps
running where it was, and a later move of the same VM works."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvcluster.models.lifecycle import MigrationState, VMState
from tests.sim.cluster import SimCluster
from tests.sim.moves import move, wait_state
from tests.sim.test_storage_move import final, request, running_vm, spec, volumes

pytestmark = pytest.mark.timeout(60)
_M = MigrationState


def agent_runs(cluster: SimCluster, node: str) -> bool:
    return not cluster.tasks[node].done()


async def test_a_bug_in_the_transfer_fails_that_migration_and_the_vm_stays(
    cluster: SimCluster,
) -> None:
    await cluster.start("n1", "n2")
    await cluster.create_vm("app", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("app") == "n1"
    bug = cluster.drivers["n1"].inject_bug("migrate_out", "app", "boom", times=None)
    rec = await move(cluster, "app", "n2")
    failed = await wait_state(cluster, rec.id, _M.FAILED, _M.DONE)
    assert failed.state is _M.FAILED
    assert "unexpected error on n1: RuntimeError: migrate_out of app: boom" in failed.reason
    [said] = await cluster.event_list("migration.failed", "vm/app")
    assert "RuntimeError: migrate_out of app: boom" in said.reason
    await cluster.worker_cycles("n1")  # the failed record is not tried again
    assert bug.hits == 1
    assert agent_runs(cluster, "n1") and agent_runs(cluster, "n2")
    assert await cluster.running_on("app") == "n1"

    cluster.drivers["n1"].bugs.clear("migrate_out", "app")
    again = await move(cluster, "app", "n2")
    done = await wait_state(cluster, again.id, _M.DONE, _M.FAILED)
    assert done.state is _M.DONE, done.reason
    assert await cluster.wait_running("app", not_on="n1") == "n2"


async def test_a_bug_preparing_the_target_fails_the_record_once(cluster: SimCluster) -> None:
    await cluster.start("n1", "n2")
    await cluster.create_vm("app", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("app") == "n1"
    bug = cluster.drivers["n2"].inject_bug("prepare_incoming", "app", "no can do", times=None)
    rec = await move(cluster, "app", "n2")
    failed = await wait_state(cluster, rec.id, _M.FAILED, _M.DONE)
    assert "unexpected error on n2: RuntimeError: prepare_incoming of app" in failed.reason
    assert await cluster.event_list("migration.failed", "vm/app")
    await cluster.worker_cycles("n2")
    assert bug.hits == 1, "a record that keeps failing is failed once, not retried"
    assert agent_runs(cluster, "n2")
    assert await cluster.running_on("app") == "n1"
    assert "app" not in cluster.daemons["n2"].agent.incoming  # type: ignore[union-attr]

    cluster.drivers["n2"].bugs.clear("prepare_incoming", "app")
    again = await move(cluster, "app", "n2")
    done = await wait_state(cluster, again.id, _M.DONE, _M.FAILED)
    assert done.state is _M.DONE, done.reason
    assert await cluster.wait_running("app", not_on="n1") == "n2"


async def test_a_bug_after_the_flip_does_not_stop_the_source_agent(cluster: SimCluster) -> None:
    """The source's step on a done record (discard its paused copy) raises every time: the
    agent gives that record up, says so, and its reconcile removes the copy instead."""
    await cluster.start("n1", "n2")
    await cluster.create_vm("app", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("app") == "n1"
    cluster.drivers["n1"].inject_bug("discard", "app", "stuck", times=None)
    rec = await move(cluster, "app", "n2")
    done = await wait_state(cluster, rec.id, _M.DONE, _M.FAILED)
    assert done.state is _M.DONE, done.reason
    assert await cluster.wait_running("app", not_on="n1") == "n2"

    async def said() -> bool:
        return bool(await cluster.event_list("migration.error", "vm/app"))

    await cluster.wait_for(said, 10, "the error said")
    [error] = await cluster.event_list("migration.error", "vm/app")
    assert "RuntimeError: discard of app: stuck" in error.reason and "gives it up" in error.reason

    async def copy_gone() -> bool:
        infos = await cluster.drivers["n1"].list()
        return all(i.state in (VMState.STOPPED, VMState.FAILED) for i in infos if i.name == "app")

    await cluster.wait_for(copy_gone, 10, "the paused copy on n1 removed by its reconcile")
    assert agent_runs(cluster, "n1")
    back = await move(cluster, "app", "n1")
    home = await wait_state(cluster, back.id, _M.DONE, _M.FAILED)
    assert home.state is _M.DONE, home.reason
    assert await cluster.wait_running("app", not_on="n2") == "n1"


async def test_a_bug_in_a_disk_move_fails_that_move_and_the_vm_keeps_its_disk(
    cluster: SimCluster, tmp_path: Path
) -> None:
    paths = await volumes(cluster, tmp_path, "a", "b")
    await cluster.start("n1")
    assert await running_vm(cluster, paths["a"]) == "n1"
    bug = cluster.drivers["n1"].inject_bug("move_disk", "db", "mirror went away", times=None)
    rec = await request(cluster, "db", "b")
    failed = await final(cluster, rec.id)
    assert failed.state is _M.FAILED
    assert (
        failed.reason == "unexpected error on n1: RuntimeError: move_disk of db: mirror went away"
    )

    async def said_failed() -> bool:  # (the record fails first, then its event is written)
        return bool(await cluster.event_list("storage.move_failed", "vm/db"))

    await cluster.wait_for(said_failed, 5, "the storage.move_failed event")
    [said] = await cluster.event_list("storage.move_failed", "vm/db")
    assert "mirror went away" in said.reason
    await cluster.worker_cycles("n1")
    assert bug.hits == 1 and agent_runs(cluster, "n1")
    assert await cluster.running_on("db") == "n1"
    assert (await spec(cluster, "db")).disks[0].volume == "a"

    cluster.drivers["n1"].bugs.clear("move_disk", "db")
    again = await request(cluster, "db", "b")
    done = await final(cluster, again.id)
    assert done.state is _M.DONE, done.reason
    assert (await spec(cluster, "db")).disks[0].volume == "b"


async def test_the_source_sends_only_to_the_target_nodes_registered_address(
    cluster: SimCluster,
) -> None:
    """A target address that is tcp:HOST:PORT but not the target node's (here the target's
    driver listens on another loopback address): refused, the record failed with the
    reason, the VM stays; the next move of it works."""
    await cluster.start("n1", "n2")
    await cluster.create_vm("app", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("app") == "n1"
    cluster.drivers["n2"].listen_elsewhere("app", "127.0.0.2")
    rec = await move(cluster, "app", "n2")
    failed = await wait_state(cluster, rec.id, _M.FAILED, _M.DONE)
    assert failed.reason.startswith("refused to migrate app to 'tcp:127.0.0.2:")
    assert failed.reason.endswith("127.0.0.2 is not n2's registered migration address 127.0.0.1")
    [said] = await cluster.event_list("migration.failed", "vm/app")
    assert "is not n2's registered migration address" in said.reason
    assert await cluster.running_on("app") == "n1"
    assert failed.progress.bytes_transferred == 0

    again = await move(cluster, "app", "n2")
    done = await wait_state(cluster, again.id, _M.DONE, _M.FAILED)
    assert done.state is _M.DONE, done.reason
    assert await cluster.wait_running("app", not_on="n1") == "n2"


async def test_a_bug_starting_one_vm_fails_that_vm_and_the_others_start(
    cluster: SimCluster,
) -> None:
    """The agent's reconcile loop is a worker too: a start that raises unexpectedly fails
    that VM with the reason (said once per try), and the VMs after it in the same cycle
    still start, stop and report (before: the cycle ended there, every time)."""
    await cluster.start("n1")
    bug = cluster.drivers["n1"].inject_bug("start", "a", "no can do", times=None)
    await cluster.create_vm("a")
    await cluster.create_vm("b")
    assert await cluster.wait_running("b") == "n1"

    async def a_failed() -> str:
        status = await cluster.status("a")
        failed = status is not None and status.state is VMState.FAILED
        return status.last_error if failed and status is not None else ""

    error = await cluster.wait_for(a_failed, 20, "a failed with the reason")
    assert "RuntimeError: start of a: no can do" in error
    [said, *_] = await cluster.event_list("vm.start_failed", "vm/a")
    assert "RuntimeError: start of a: no can do" in said.reason
    assert bug.hits >= 1 and agent_runs(cluster, "n1")
    assert await cluster.running_on("a") is None

    cluster.drivers["n1"].bugs.clear("start", "a")
    await cluster.create_vm("c")
    assert await cluster.wait_running("c") == "n1"


async def test_a_kill_that_raises_for_one_vm_still_kills_the_others(cluster: SimCluster) -> None:
    """Killing the VMs whose placement moved away (liveness's re-registration, a changed
    placement) goes on past one VM whose kill raises unexpectedly: the others must not run
    on while they start elsewhere."""
    await cluster.start("n1")
    for name in ("a", "b", "c"):
        await cluster.create_vm(name)
        assert await cluster.wait_running(name) == "n1"
    driver = cluster.drivers["n1"]
    driver.inject_bug("kill", "a", "no can do", times=1)
    agent = cluster.daemons["n1"].agent
    assert agent is not None
    await agent.kill_now({"a", "b", "c"}, "test: placement moved")
    states = {vm.name: vm.state for vm in await driver.list()}
    assert states["b"] is VMState.STOPPED and states["c"] is VMState.STOPPED, states
    killed = {e.subject for e in await cluster.event_list("vm.killed")}
    assert {"vm/b", "vm/c"} <= killed and "vm/a" not in killed
