"""What liveness measures into the agent's metrics: keepalives confirmed and failed, how long
ago the watchdog was fed, and each time its deadline passed (a fence), counted once. On the
manual clock of :mod:`tests.agent.test_liveness`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hvcluster.agent.liveness import NodeLiveness
from hvcluster.clock import ManualClock
from tests.agent.test_liveness import CONFIG, CutOffStore, _liveness, clock, memory_store
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(30)
__all__ = ["clock"]  # the fixture


@pytest.fixture
async def running() -> AsyncIterator[list[asyncio.Task[None]]]:
    """Tasks stopped after the test, whatever it ends with."""
    tasks: list[asyncio.Task[None]] = []
    yield tasks
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def scraped(live: NodeLiveness) -> dict[str, float]:
    """The unlabelled samples of the agent's registry, as Prometheus would read them."""
    text = generate_latest(live.metrics.registry).decode()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.labels
    }


async def test_a_node_cut_off_counts_one_fence_and_its_failed_keepalives(
    tmp_path: Path,
    running: list[asyncio.Task[None]],
    clock: ManualClock,
) -> None:
    store = CutOffStore(clock)
    live, feeder = await _liveness(store, tmp_path, clock)
    running.append(asyncio.create_task(live.run()))
    await wait_for(lambda: len(feeder.deadlines) >= 3, 5, "confirmed keepalives fed", clock=clock)
    m = scraped(live)
    assert m["hvc_lease_renew_seconds_count"] >= 2  # (registration's keepalive is not timed)
    assert m["hvc_lease_renew_failures_total"] == 0
    assert m["hvc_watchdog_feed_age_seconds"] <= CONFIG.fence_after_s
    assert m["hvc_watchdog_fences_total"] == 0
    store.cut = True
    await wait_for(lambda: live.fenced, CONFIG.fence_after_s + 5, "fenced", clock=clock)
    await wait_for(
        lambda: scraped(live)["hvc_watchdog_fences_total"] == 1, 5, "the fence counted", clock=clock
    )
    m = scraped(live)
    assert m["hvc_lease_renew_failures_total"] >= 1
    assert m["hvc_watchdog_feed_age_seconds"] >= CONFIG.fence_after_s
    assert m["hvc_watchdog_deadline_seconds"] <= 0
    store.cut = False
    ok = CONFIG.keepalive_interval_s * 3
    await wait_for(lambda: live.confirmed_within(ok), 5, "keepalives confirmed again", clock=clock)
    await wait_for(lambda: not live.fenced, 5, "a deadline ahead again", clock=clock)
    m = scraped(live)
    assert m["hvc_watchdog_fences_total"] == 1  # the feed after it does not count it again
    assert m["hvc_watchdog_deadline_seconds"] > 0
    assert m["hvc_watchdog_feed_age_seconds"] < CONFIG.fence_after_s


async def test_riding_out_an_etcd_without_leader_is_no_fence(
    tmp_path: Path,
    running: list[asyncio.Task[None]],
    clock: ManualClock,
) -> None:
    store = memory_store(clock)
    live, feeder = await _liveness(store, tmp_path, clock)
    running.append(asyncio.create_task(live.run()))
    await wait_for(lambda: live.confirmed_within(1.0), 5, "a confirmed keepalive", clock=clock)
    store.set_available(False)
    late = clock.now() + 2 * CONFIG.fence_after_s
    await wait_for(
        lambda: feeder.deadlines[-1] >= late, 10, "fed on evidence meanwhile", clock=clock
    )
    m = scraped(live)
    assert m["hvc_lease_renew_failures_total"] >= 1
    assert m["hvc_watchdog_fences_total"] == 0
    assert m["hvc_watchdog_feed_age_seconds"] < CONFIG.fence_after_s  # fed on evidence
    store.set_available(True)
