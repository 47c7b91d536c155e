"""``hvc node list`` / ``show`` give each node's CPU use (measured: what its agent publishes
for the balancer) and memory use (the memory of the VMs placed there), beside its capacity."""

from __future__ import annotations

import json
import time

from typer.testing import CliRunner

from hvcluster.cli.main import app as cli_app
from hvcluster.models.base import encode
from hvcluster.models.node import NodeAlive
from hvcluster.models.usage import NodeUsage
from hvcluster.models.vm import Placement
from tests.cli.conftest import KEYS, ApiServer
from tests.cli.test_commands import ok


async def _alive_and_busy(server: ApiServer, name: str) -> None:
    assert server.store is not None
    lease = await server.store.grant(60)
    beat = NodeAlive(node=name, lease=lease.id, since=time.time())
    await server.store.put(KEYS.alive(name), encode(beat), lease=lease.id)
    usage = NodeUsage(node=name, at=time.time(), window_s=300, host_cores=1.5, vms={"use-vm": 1})
    await server.store.put(KEYS.usage(name), encode(usage))


def test_node_list_and_show_give_cpu_and_memory_use(server: ApiServer) -> None:
    def hvc(*args: str) -> str:
        env = {**server.env(), "COLUMNS": "250"}
        return ok(CliRunner().invoke(cli_app, [*args, "--api", server.url], env=env))

    for name in ("use-1", "use-2"):  # 2 CPUs, 2048 MiB each; use-2 has published nothing
        server.add_node(name)
    server.run(_alive_and_busy(server, "use-1"))
    created = json.loads(hvc("vm", "create", "use-vm", "--memory", "512", "--json"))
    placement = Placement(node="use-1", epoch=1, uid=created["spec"]["uid"])
    assert server.store is not None
    server.run(server.store.put(KEYS.placement("use-vm"), encode(placement)))

    nodes = {n["name"]: n for n in json.loads(hvc("node", "list", "--json"))["nodes"]}
    assert nodes["use-1"]["cpu_used_cores"] == 1.5 and nodes["use-1"]["cpu_window_s"] == 300
    assert nodes["use-1"]["memory_placed_mib"] == 512
    assert nodes["use-2"]["cpu_used_cores"] is None and nodes["use-2"]["memory_placed_mib"] == 0

    table = hvc("node", "list").splitlines()
    assert "CPUS" in table[2] and "MIB" in table[2]
    assert "2 75%" in next(line for line in table if "use-1" in line)  # 1.5 of 2 cores
    assert "2048 25%" in next(line for line in table if "use-1" in line)  # 512 MiB placed
    assert "│ 2    " in next(line for line in table if "use-2" in line)  # not measured

    shown = " ".join(w for w in hvc("node", "show", "use-1").split() if w not in "│┃")
    assert "cpu use 75 % (1.5 of 2 cores, averaged over 300 s)" in shown
    assert "memory use 25 % (512 of 2048 MiB placed)" in shown
