"""Liveness on a thread of its own: the main loop reads its state safely, and an end of
liveness (a bug, a store that cannot be built) ends the agent rather than leaving it running
unfed."""

from __future__ import annotations

import asyncio
import time

import pytest

from hvcluster.agent.liveness import NodeLiveness
from hvcluster.agent.liveness_thread import LivenessRunner, OwnThread
from hvcluster.models.config import ClusterConfig
from hvcluster.store.base import Store
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from hvcluster.watchdog.node import MemoryWatchdog

pytestmark = pytest.mark.timeout(30)

CONFIG = ClusterConfig(
    lease_ttl_s=1.5, keepalive_interval_s=0.1, fence_after_s=0.8, recovery_margin_s=0.5,
    evidence_interval_s=0.2,
)  # fmt: skip


async def test_a_thread_keeps_the_lease_and_the_main_loop_reads_its_state() -> None:
    watchdog = MemoryWatchdog()
    main_thread_calls: list[set[str]] = []

    async def build(store: Store, runner: LivenessRunner) -> NodeLiveness:
        async def say(kind: str, reason: str) -> None:
            pass

        async def kill(names: set[str]) -> None:
            main_thread_calls.append(names)

        return NodeLiveness(
            store, Keys("t"), "n1", CONFIG, watchdog, dict, runner.on_main(kill), say
        )

    runner = OwnThread(MemoryStore, build, "liveness-test")
    await runner.start()
    try:
        await asyncio.wait_for(runner.registered(), 10)
        lease = runner.state().lease_id
        assert lease != 0
        time.sleep(4 * CONFIG.fence_after_s)  # noqa: ASYNC251 - this loop is blocked
        state = runner.state()
        assert state.lease_id == lease
        assert state.may_start(time.monotonic(), CONFIG.fence_after_s) is None
        assert watchdog.deadlines[-1] > time.monotonic()  # fed while this loop was blocked
        assert not runner.ended()
    finally:
        await runner.stop()
    assert runner.ended()


async def test_liveness_that_cannot_start_ends_the_agent() -> None:
    async def build(store: Store, runner: LivenessRunner) -> NodeLiveness:
        raise RuntimeError("no way")

    runner = OwnThread(MemoryStore, build, "liveness-test")
    await runner.start()
    try:
        with pytest.raises(RuntimeError, match="no way"):
            await asyncio.wait_for(runner.registered(), 10)
    finally:
        await runner.stop()
