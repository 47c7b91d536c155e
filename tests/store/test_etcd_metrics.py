"""Every request of an EtcdStore given an agent's metrics is timed into
``hvc_etcd_request_seconds``, by operation and outcome (a real etcd)."""

from __future__ import annotations

import socket
import uuid

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hvcluster.lab.etcd import EtcdCluster
from hvcluster.metrics import AgentMetrics
from hvcluster.models.errors import LeaseLost, StoreUnavailable
from hvcluster.store.base import Get, Put
from hvcluster.store.etcd import EtcdStore

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(60)]


def counts(metrics: AgentMetrics) -> dict[tuple[str, str], float]:
    """``hvc_etcd_request_seconds_count`` by (op, outcome), as scraped."""
    text = generate_latest(metrics.registry).decode()
    return {
        (s.labels["op"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "hvc_etcd_request_seconds_count"
    }


async def test_requests_are_timed_by_operation_and_outcome(etcd_session: EtcdCluster) -> None:
    metrics = AgentMetrics("n1")
    store = EtcdStore(etcd_session.endpoints, metrics=metrics)
    prefix = f"/metrics-test/{uuid.uuid4().hex}/"
    try:
        await store.put(prefix + "a", b"1")
        await store.get(prefix + "a")
        await store.get(prefix + "b")
        await store.txn([], [Put(prefix + "c", b"2"), Get(prefix + "a")])
        await store.range(prefix)
        with pytest.raises(LeaseLost):
            await store.keepalive(0x7FFF_FFFF)  # no such lease: an answer all the same
    finally:
        await store.close()
    found = counts(metrics)
    assert found[("put", "ok")] == 1
    assert found[("get", "ok")] == 2
    assert found[("txn", "ok")] == 1
    assert found[("range", "ok")] >= 1
    assert found[("keepalive", "ok")] == 1
    assert not [k for k in found if k[1] == "error"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_a_request_nobody_answers_is_an_error_with_its_time() -> None:
    metrics = AgentMetrics("n1")
    store = EtcdStore([f"127.0.0.1:{free_port()}"], timeout=0.5, metrics=metrics)
    try:
        with pytest.raises(StoreUnavailable):
            await store.get("/nothing")
    finally:
        await store.close()
    assert counts(metrics) == {("get", "error"): 1}
    text = generate_latest(metrics.registry).decode()
    sums = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "hvc_etcd_request_seconds_sum"
    ]
    assert sums and sums[0] >= 0.4  # it waited out (most of) its deadline
