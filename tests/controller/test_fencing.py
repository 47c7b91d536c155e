"""The fence agent: a real command run per gone node, once per outage; what it answered is an
event and a count of the controller's metrics (``hvc_fence_agent_runs_total``)."""

from __future__ import annotations

import shutil

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hvcluster.controller.fencing import Fencer
from hvcluster.metrics import AgentMetrics
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(30)


def runs(metrics: AgentMetrics) -> dict[str, float]:
    """``hvc_fence_agent_runs_total`` by result, as scraped."""
    text = generate_latest(metrics.registry).decode()
    return {
        s.labels["result"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "hvc_fence_agent_runs_total"
    }


async def test_each_fence_is_said_and_counted_by_its_result() -> None:
    said: list[tuple[str, str]] = []

    async def say(kind: str, subject: str, reason: str) -> None:
        said.append((kind, subject))

    metrics = AgentMetrics("n1")
    fencer = Fencer(say, metrics)
    assert runs(metrics) == {"confirmed": 0, "failed": 0}  # there before the first run
    true, false = shutil.which("true"), shutil.which("false")
    assert true and false
    fencer.request("n2", f"{true} {{node}}", 5)
    fencer.request("n3", false, 5)
    fencer.request("n2", true, 5)  # under way already: not run twice
    await wait_for(lambda: len(said) == 2, 10, "both fence commands answered")
    assert sorted(said) == [("node.fence_failed", "node/n3"), ("node.fenced", "node/n2")]
    assert runs(metrics) == {"confirmed": 1, "failed": 1}
    assert fencer.fenced == {"n2"}
    fencer.close()
