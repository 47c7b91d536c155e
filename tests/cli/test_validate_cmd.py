"""``hvc cluster validate`` against real agent APIs (uvicorn on loopback, in a thread of
their own) over one MemoryStore."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from typer.testing import CliRunner, Result

from hvcluster.cli.main import app as cli_app
from hvcluster.models.base import encode
from hvcluster.models.storage import Volume
from hvcluster.models.token import Role
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from tests.tokens import make_token
from tests.validate.agents import Agents

# agents that must answer within seconds: not on a core shared with other tests
pytestmark = [pytest.mark.timeout(60), pytest.mark.alone]

KEYS = Keys("val")
T = TypeVar("T")


class Cluster:
    """Two agents' APIs (n1, n2) in a background event loop; n2 lacks volume csv1."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.store: MemoryStore | None = None
        self.agents: Agents | None = None
        self.url = ""
        self.token = ""  # a reader's: validate needs no more, on any agent

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=20)

    async def _setup(self) -> None:
        self.store = MemoryStore()
        self.agents = Agents(self.store, KEYS)
        self.token = await make_token(self.store, KEYS, "val-reader", Role.READER)
        volume = Volume(name="csv1", path="/srv/csv1", id="c" * 32)
        await self.store.put(KEYS.volume("csv1"), encode(volume))
        n1 = await self.agents.add("n1", volumes=("csv1",), volume_free_mib={"csv1": 5000})
        await self.agents.add("n2", volume_problems={"csv1": "/srv/csv1 does not exist"})
        self.url = f"http://127.0.0.1:{n1.api_port}"

    async def _teardown(self) -> None:
        if self.agents is not None:
            await self.agents.stop()
        if self.store is not None:
            await self.store.close()

    def start(self) -> None:
        self.thread.start()
        self.run(self._setup())

    def stop(self) -> None:
        try:
            self.run(self._teardown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()


def hvc(cluster: Cluster, *args: str) -> Result:
    args = ("cluster", "validate", *args, "--api", cluster.url)
    return CliRunner().invoke(cli_app, args, env={"COLUMNS": "250", "HVC_TOKEN": cluster.token})


def test_table_names_the_failure_and_exits_1(cluster: Cluster) -> None:
    result = hvc(cluster)
    assert result.exit_code == 1, result.output
    out = result.output
    for category in ("inventory", "hypervisor", "network", "storage", "time", "etcd"):
        assert category in out
    assert "volume csv1" in out and "not seen by n2 (/srv/csv1 does not exist)" in out
    assert "FAILED" in out


def test_json_report(cluster: Cluster) -> None:
    result = hvc(cluster, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    by = {c["name"]: c for c in report["checks"]}
    assert by["volume csv1"]["status"] == "fail" and by["volume csv1"]["nodes"] == ["n2"]
    assert by["agent api n2 -> n1"]["status"] == "pass"
    assert report["served_by"] == "n1"


def test_html_report(cluster: Cluster, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    result = hvc(cluster, "--html", str(page))
    assert result.exit_code == 1
    assert f"report written to {page}" in result.output.replace("\n", "")
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "volume csv1" in html and "/srv/csv1 does not exist" in html
    assert 'class="status fail"' in html
    assert "<script" not in html and "http://" not in html and "https://" not in html


def test_a_passing_cluster_exits_0(cluster: Cluster) -> None:
    assert cluster.store is not None
    cluster.run(cluster.store.delete(KEYS.volume("csv1")))
    try:
        result = hvc(cluster, "--json")
        report = json.loads(result.stdout)
        assert [c for c in report["checks"] if c["status"] == "fail"] == []
        assert result.exit_code == 0
    finally:
        volume = Volume(name="csv1", path="/srv/csv1", id="c" * 32)
        cluster.run(cluster.store.put(KEYS.volume("csv1"), encode(volume)))


def test_unreachable_api_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli_app, ["cluster", "validate", "--api", "http://127.0.0.1:9"])
    assert result.exit_code == 5  # unreachable
    assert "cannot reach the hvcluster API" in result.output
    assert "Traceback" not in result.output
