"""``hvc cluster balance --yes`` applying a real plan: a real API server over an in-process
cluster (real agents and controller on the sim driver, real time), n1 made hot by its
guests' CPU use. The command shows the plan, then follows the run: which VM moved, which
did not and why, and a summary; its exit code says whether every move succeeded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from hvcluster.cli.main import app as cli_app
from hvcluster.models.config import BalanceSettings
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from tests.cli.conftest import ApiServer
from tests.sim.cluster import FAST, SimCluster

pytestmark = pytest.mark.timeout(120)

VMS = [f"vm-{i}" for i in range(4)]


class ClusterApi(ApiServer):
    """The API over a running sim cluster: n1, n2 and four VMs on n1, each busy a whole core
    (n1 at 100 % CPU), that CPU use published; automatic balancing off."""

    def __init__(self, tmp: Path) -> None:
        super().__init__()
        config = FAST.model_copy(update={"balance": BalanceSettings(enabled=False)})
        self.cluster = SimCluster(tmp, config, real_time=True)

    async def open_store(self) -> tuple[MemoryStore, Keys]:
        c = self.cluster
        await c.start("n1", "n2")
        for driver in c.drivers.values():
            driver.cpu_set.update({vm: 100.0 for vm in VMS})
        for vm in VMS:
            await c.create_vm(vm, vcpus=1, ha={"preferred_owners": ["n1"]})
        for vm in VMS:
            assert await c.wait_running(vm) == "n1"
        for name in ("n1", "n2"):  # what the agents publish every 30 s, now
            usage = c.daemons[name].usage
            assert usage is not None
            await usage.sample()
            await usage.publish(c.config)
        return c.store, c.keys

    async def close_store(self) -> None:
        await self.cluster.stop()

    async def where(self) -> dict[str, str | None]:
        return {vm: await self.cluster.running_on(vm) for vm in VMS}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ClusterApi]:
    s = ClusterApi(tmp_path)
    try:
        s.start(60)
        yield s
    finally:
        s.stop()


def hvc(server: ClusterApi, *args: str) -> Result:
    runner = CliRunner()
    return runner.invoke(
        cli_app, [*args, "--api", server.url], env={**server.env(), "COLUMNS": "200"}
    )


def test_balance_yes_shows_the_plan_and_each_move_s_outcome(server: ClusterApi) -> None:
    n1 = server.cluster.drivers["n1"]
    for vm in VMS:  # every live migration off n1 breaks
        n1.bugs.add("migrate_out", vm, "the migration link is down", None)
    failed = hvc(server, "cluster", "balance", "--yes")
    out = failed.output
    assert failed.exit_code == 1, out
    assert "balance plan" in out and "n1" in out and "n2" in out  # the table first
    assert "balancing: 1 move(s) planned, the first wave started" in out
    text = " ".join(out.split())
    assert "not moved vm-0:" in text and "the migration link is down" in text
    assert "0 of 1 VM(s) moved; not moved: vm-0" in text
    # the run's end says which move failed and why, that it stopped, what is left above
    assert "stopped: moving vm-0 from n1 to n2 failed (" in text
    assert (
        "a run moves each VM at most once, so this one stopped with n1 still above the low level"
        in text
    )
    assert "moved already" not in text
    assert server.run(server.where()) == dict.fromkeys(VMS, "n1")

    for vm in VMS:
        n1.bugs.clear("migrate_out", vm)
    moved = hvc(server, "cluster", "balance", "--yes")
    out = moved.output
    assert moved.exit_code == 0, out
    text = " ".join(out.split())
    assert "moving vm-0: balance at the low level" in text
    assert "moved vm-0: vm vm-0 moved from n1 to n2 by live migration" in text
    assert "every node is within the low level" in text
    assert text.endswith("1 of 1 VM(s) moved")
    assert server.run(server.where())["vm-0"] == "n2"


def test_no_wait_returns_once_the_run_began(server: ClusterApi) -> None:
    began = hvc(server, "cluster", "balance", "--yes", "--no-wait")
    assert began.exit_code == 0, began.output
    assert "first wave started" in began.output and "'hvc events' follows them" in began.output
    assert "VM(s) moved" not in began.output
