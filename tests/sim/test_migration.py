"""Live and quick migration in an in-process cluster: the protocol's states, cancel, and
hosts crashing mid-migration (never two running copies)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from hvcluster.models.base import decode
from hvcluster.models.lifecycle import MigrationState, VMState
from hvcluster.models.migration import Migration, MigrationKind
from hvcluster.store.base import Compare, Op, Put, TxnResult
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from hvcluster.store.migrations import change_migration, read_migrations
from tests.sim.cluster import SimCluster
from tests.sim.moves import SLOW, StateTrail, move, record, wait_state

pytestmark = pytest.mark.timeout(60)
_M = MigrationState


async def test_live_migration_goes_through_every_state_and_flips_the_placement(
    cluster: SimCluster,
) -> None:
    await cluster.start("n1", "n2")
    await cluster.create_vm("web", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("web") == "n1"
    rec = await move(cluster, "web", "n2")
    trail = StateTrail(cluster, rec.id)
    await trail.start()
    done = await wait_state(cluster, rec.id, _M.DONE, _M.FAILED)
    assert done.state is _M.DONE, done.reason
    assert await cluster.wait_running("web", not_on="n1") == "n2"
    placement = await cluster.placement("web")
    assert placement is not None and (placement.node, placement.epoch) == ("n2", 2)

    async def reported() -> bool:
        s = await cluster.status("web")
        return s is not None and (s.node, s.epoch, s.state) == ("n2", 2, VMState.RUNNING)

    await cluster.wait_for(reported, 10, "n2 to report web running at epoch 2")
    assert await trail.stop() == [
        _M.REQUESTED,
        _M.PREPARING,
        _M.TRANSFERRING,
        _M.DONE,  # the source flipped it the moment its transfer completed
    ]

    async def timed() -> Migration | None:  # the target's resume time and QEMU's measures
        got = await record(cluster, rec.id)
        return got if got.downtime_ms is not None else None

    final: Migration = await cluster.wait_for(timed, 10, "the downtime recorded")
    assert final.target == "n2" and final.total_ms and final.resumed_at >= final.switching_at
    assert final.downtime_ms == pytest.approx(
        (final.transfer_downtime_ms or 0) + (final.resumed_at - final.switching_at) * 1000
    )
    assert await cluster.event_list("migration.done", "vm/web")

    async def source_copy_gone() -> bool:  # once the target runs it
        return not [v for v in await cluster.drivers["n1"].list() if v.state is not VMState.STOPPED]

    await cluster.wait_for(source_copy_gone, 10, "the paused source copy discarded")
    switched = await cluster.event_list("migration.switched", "vm/web")
    assert switched and "by the source" in switched[-1].reason


async def test_no_target_given_the_scheduler_picks_one(cluster: SimCluster) -> None:
    await cluster.start("n1", "n2", "n3")
    await cluster.create_vm("db", ha={"preferred_owners": ["n2"], "possible_owners": ["n1", "n2"]})
    assert await cluster.wait_running("db") == "n2"
    rec = await move(cluster, "db")
    done = await wait_state(cluster, rec.id, _M.DONE, _M.FAILED)
    assert done.state is _M.DONE and done.target == "n1"  # n3 is not a possible owner
    assert await cluster.wait_running("db", not_on="n2") == "n1"


async def test_cancel_mid_transfer_keeps_the_vm_on_the_source(tmp_path: Path) -> None:
    cluster = SimCluster(tmp_path, SLOW)
    try:
        await cluster.start("n1", "n2")
        await cluster.create_vm("app", ha={"preferred_owners": ["n1"]})
        assert await cluster.wait_running("app") == "n1"
        rec = await move(cluster, "app", "n2")
        await wait_state(cluster, rec.id, _M.TRANSFERRING)

        async def progressed() -> bool:
            return (await record(cluster, rec.id)).progress.bytes_transferred > 0

        await cluster.wait_for(progressed, 10, "progress published")
        await change_migration(
            cluster.store,
            cluster.keys,
            rec.id,
            lambda m: m.model_copy(update={"state": _M.CANCELLED, "reason": "test"}),
        )

        async def target_clean() -> bool:
            return not [
                v
                for v in await cluster.drivers["n2"].list()
                if v.name == "app" and v.state not in (VMState.STOPPED, VMState.FAILED)
            ]

        await cluster.wait_for(target_clean, 10, "the target copy discarded")
        await cluster.worker_cycles("n1")  # the cancelled move had its chance to go on
        assert await cluster.running_on("app") == "n1"
        placement = await cluster.placement("app")
        assert placement is not None and (placement.node, placement.epoch) == ("n1", 1)
    finally:
        await cluster.stop()


async def test_target_crash_mid_migration_keeps_the_vm_on_the_source(tmp_path: Path) -> None:
    cluster = SimCluster(tmp_path, SLOW)
    try:
        await cluster.start("n1", "n2")
        await cluster.create_vm("app", ha={"preferred_owners": ["n1"]})
        assert await cluster.wait_running("app") == "n1"
        rec = await move(cluster, "app", "n2")
        await wait_state(cluster, rec.id, _M.TRANSFERRING)
        await cluster.crash("n2")
        failed = await wait_state(cluster, rec.id, _M.FAILED, _M.DONE)
        assert failed.state is _M.FAILED and "n2" in failed.reason
        assert await cluster.wait_running("app", 10) == "n1"  # its transfer is cancelled

        async def still_on_n1() -> None:
            assert await cluster.running_on("app") == "n1"

        await cluster.worker_cycles("n1", meanwhile=still_on_n1)
        placement = await cluster.placement("app")
        assert placement is not None and placement.node == "n1"
    finally:
        await cluster.stop()


async def test_source_crash_mid_migration_fails_over_with_never_two_copies(
    tmp_path: Path,
) -> None:
    cluster = SimCluster(tmp_path, SLOW)
    try:
        await cluster.start("n1", "n2", "n3")
        await cluster.create_vm("app", ha={"preferred_owners": ["n1", "n2"]})
        assert await cluster.wait_running("app") == "n1"
        rec = await move(cluster, "app", "n2")
        await wait_state(cluster, rec.id, _M.TRANSFERRING)
        await cluster.crash("n1")
        failed = await wait_state(cluster, rec.id, _M.FAILED, _M.DONE)
        assert failed.state is _M.FAILED and "n1" in failed.reason
        # running_on asserts at most one running copy on every poll
        node = await cluster.wait_running("app", 20, not_on="n1")
        assert node in ("n2", "n3")

        async def still_one() -> None:
            assert await cluster.running_on("app") == node

        await cluster.worker_cycles(node, meanwhile=still_one)
        assert await cluster.event_list("vm.recovered", "vm/app")
    finally:
        await cluster.stop()


async def test_the_controller_flips_when_the_source_cannot(tmp_path: Path) -> None:
    """The fallback path: the source's own flip fails its compare (the placement was
    rewritten during the transfer, same node and epoch), so it hands the record to the
    controller as switching, which flips it."""
    cluster = SimCluster(tmp_path, SLOW)
    try:
        await cluster.start("n1", "n2")
        await cluster.create_vm("app", ha={"preferred_owners": ["n1"]})
        assert await cluster.wait_running("app") == "n1"
        rec = await move(cluster, "app", "n2")
        trail = StateTrail(cluster, rec.id)
        await trail.start()
        await wait_state(cluster, rec.id, _M.TRANSFERRING)
        kv = await cluster.store.get(cluster.keys.placement("app"))
        assert kv is not None
        await cluster.store.put(kv.key, kv.value)  # the same placement, a new mod revision
        done = await wait_state(cluster, rec.id, _M.DONE, _M.FAILED)
        assert done.state is _M.DONE, done.reason
        assert await trail.stop() == [
            _M.REQUESTED,
            _M.PREPARING,
            _M.TRANSFERRING,
            _M.SWITCHING,
            _M.DONE,
        ]
        assert await cluster.wait_running("app", not_on="n1") == "n2"
        placement = await cluster.placement("app")
        assert placement is not None and (placement.node, placement.epoch) == ("n2", 2)
        switched = await cluster.event_list("migration.switched", "vm/app")
        assert switched and "by the controller" in switched[-1].reason
    finally:
        await cluster.stop()


class HeldFlipStore(MemoryStore):
    """Holds the source's own flip (the record still transferring) forever: the source host
    dies after its transfer completed, before its flip reaches the store."""

    def __init__(self, keys: Keys, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self.keys = keys
        self.held = asyncio.Event()

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        keys = {op.key for op in success if isinstance(op, Put)}
        for key in keys:
            if key.startswith(self.keys.prefix("migrations")) and any(
                k.startswith(self.keys.prefix("placements")) for k in keys
            ):
                kv = await self.get(key)
                assert kv is not None
                if decode(Migration, kv.key, kv.value).state is _M.TRANSFERRING:
                    self.held.set()
                    await asyncio.Event().wait()  # until the host's tasks are cancelled
        return await super().txn(compares, success, failure)


async def test_source_dies_after_its_transfer_before_its_flip(tmp_path: Path) -> None:
    """Nothing flips: the record fails (the source is not alive), the target's copy never
    runs, the VM fails over from its disk, and there are never two running copies."""
    cluster = SimCluster(tmp_path, SLOW)
    store = HeldFlipStore(cluster.keys, cluster.monotonic)
    cluster.use_store(store)
    try:
        await cluster.start("n1", "n2")
        await cluster.create_vm("app", ha={"preferred_owners": ["n1", "n2"]})
        assert await cluster.wait_running("app") == "n1"
        rec = await move(cluster, "app", "n2")
        await cluster.wait_for(store.held.is_set, 20, "the source's flip held")
        assert (await record(cluster, rec.id)).state is _M.TRANSFERRING
        assert await cluster.running_on("app") is None  # paused on n1, incoming on n2
        await cluster.crash("n1")
        failed = await wait_state(cluster, rec.id, _M.FAILED, _M.DONE)
        assert failed.state is _M.FAILED and "n1" in failed.reason
        # running_on asserts at most one running copy on every poll
        assert await cluster.wait_running("app", 20, not_on="n1") == "n2"

        async def still_on_n2() -> None:
            assert await cluster.running_on("app") == "n2"

        await cluster.worker_cycles("n2", meanwhile=still_on_n2)
        assert await cluster.event_list("vm.recovered", "vm/app")
        assert not await cluster.event_list("migration.done", "vm/app")
    finally:
        await cluster.stop()


async def test_quick_migration_saves_and_restores(cluster: SimCluster) -> None:
    volume = await cluster.add_volume("csv")  # both nodes see it: the state goes there
    await cluster.start("n1", "n2")
    await cluster.create_vm("q", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("q") == "n1"
    started = (await cluster.drivers["n1"].status("q")).since
    rec = await move(cluster, "q", "n2", MigrationKind.QUICK)
    done = await wait_state(cluster, rec.id, _M.DONE, _M.FAILED)
    assert done.state is _M.DONE, done.reason
    assert await cluster.wait_running("q", not_on="n1") == "n2"

    async def timed() -> bool:
        return (await record(cluster, rec.id)).downtime_ms is not None

    await cluster.wait_for(timed, 5, "downtime recorded")
    assert started  # the restored VM keeps its age (sim state file), checked by the driver
    assert done.saved_path == done.state_file == f"csv:.hvc-migration-state/q-{rec.id}.state"
    assert done.state_verified, "the target read the state before the flip"
    state = volume / ".hvc-migration-state" / f"q-{rec.id}.state"
    assert not await asyncio.to_thread(state.exists), "deleted once restored"


async def test_failback_is_a_live_migration_and_falls_back_to_a_cold_move(
    cluster: SimCluster,
) -> None:
    await cluster.start("n1", "n2")
    await cluster.create_vm(
        "home", ha={"preferred_owners": ["n1"], "failback": {"mode": "immediate"}}
    )
    await cluster.create_vm(
        "away", ha={"preferred_owners": ["n1"], "failback": {"mode": "immediate"}}
    )
    assert await cluster.wait_running("home") == "n1"
    assert await cluster.wait_running("away") == "n1"
    await cluster.crash("n1")
    assert await cluster.wait_running("home", 20, not_on="n1") == "n2"
    assert await cluster.wait_running("away", 20, not_on="n1") == "n2"
    cluster.drivers["n2"].fail_next_migration("away", "cpu flags differ")
    await cluster.start_node("n1")
    assert await cluster.wait_running("home", 30, not_on="n2") == "n1"
    assert await cluster.wait_running("away", 30, not_on="n2") == "n1"
    records = [s.value for s in (await read_migrations(cluster.store, cluster.keys)).items.values()]
    by_vm = {r.vm: r for r in records if r.requested_by == "failback"}
    assert by_vm["home"].state is _M.DONE  # moved live
    assert by_vm["away"].state is _M.FAILED and "cpu flags differ" in by_vm["away"].reason
    away = await cluster.placement("away")
    assert away is not None and away.node == "n1" and "stopped there" in away.reason  # cold move


async def test_a_target_that_cannot_run_the_vm_at_once_tries_again_when_its_state_is_here(
    cluster: SimCluster,
) -> None:
    """The target's first resume is refused (as QEMU's ``cont`` was while the source still
    held the disks' locks): it tries once more when the stream has ended, and says so;
    before, the VM stayed paused there for good (the placement flipped, no one to run it)."""
    await cluster.start("n1", "n2")
    await cluster.create_vm("web", ha={"preferred_owners": ["n1"]})
    assert await cluster.wait_running("web") == "n1"
    cluster.drivers["n2"].refuse_next_resume("web", "Failed to get write lock")
    rec = await move(cluster, "web", "n2")
    done = await wait_state(cluster, rec.id, _M.DONE, _M.FAILED)
    assert done.state is _M.DONE, done.reason
    assert await cluster.wait_running("web", not_on="n1") == "n2"

    async def reported() -> bool:
        s = await cluster.status("web")
        return s is not None and (s.node, s.epoch, s.state) == ("n2", 2, VMState.RUNNING)

    await cluster.wait_for(reported, 10, "n2 to report web running at epoch 2")
    [said] = await cluster.event_list("migration.resume_retried", "vm/web")
    assert "Failed to get write lock" in said.reason
    assert await cluster.event_list("migration.resume_failed", "vm/web") == []
