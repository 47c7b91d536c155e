"""``hvc node list`` / ``show`` say whether a node's watchdog acknowledges feeding (when it
does not, the node starts no VM)."""

from __future__ import annotations

import json
import time
from typing import Any

from hvcluster.models.base import encode
from hvcluster.models.node import Capacity, Node, WatchdogReport
from tests.cli.conftest import KEYS, ApiServer
from tests.cli.test_commands import ok


def test_node_list_and_show_say_the_watchdog_state(hvc: Any, server: ApiServer) -> None:
    since = time.time() - 60
    silent = WatchdogReport(
        acknowledging=False, since=since, problem="no watchdog listens at /run/hvc/watchdog.sock"
    )
    for name, report in (("wd-1", silent), ("wd-2", WatchdogReport(acknowledging=True, since=1))):
        node = Node(
            name=name,
            address="127.0.0.1",
            capacity=Capacity(cpus=2, memory_mib=2048),
            watchdog=report,
        )
        assert server.store is not None
        server.run(server.store.put(KEYS.node(name), encode(node)))
    server.add_node("wd-3")  # an agent that said nothing of its watchdog
    nodes = {n["name"]: n for n in json.loads(ok(hvc("node", "list", "--json")))["nodes"]}
    assert nodes["wd-1"]["watchdog"] == "not acknowledging"
    assert nodes["wd-1"]["node"]["watchdog"]["problem"].startswith("no watchdog listens")
    assert (nodes["wd-2"]["watchdog"], nodes["wd-3"]["watchdog"]) == ("ok", "unknown")
    at = time.strftime("%H:%M:%S", time.localtime(since))
    table = ok(hvc("node", "list"))
    row = next(line for line in table.splitlines() if "wd-1" in line)
    assert "WATCHDOG" in table and "NO since" in row and at in table  # a narrow table wraps
    shown = " ".join(w for w in ok(hvc("node", "show", "wd-1")).split() if w not in "│┃")
    assert f"NO since {at}: no watchdog listens at /run/hvc/watchdog.sock" in shown
    assert "no VM starts here" in shown
