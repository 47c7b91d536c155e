"""Admission control in warn mode, as the admin sees it: ``hvc vm create`` and ``hvc vm
start`` of an HA VM that leaves the running HA VMs fewer node failures survived than the
setting print the warning (stderr, at once) and still do it; one that keeps it prints none."""

from __future__ import annotations

import time
from typing import Any

import pytest

from hvcluster.models.base import encode
from hvcluster.models.node import NodeAlive
from hvcluster.models.vm import Placement
from tests.cli.conftest import KEYS, ApiServer

pytestmark = pytest.mark.timeout(60)


async def _alive(server: ApiServer, name: str) -> None:
    assert server.store is not None
    lease = await server.store.grant(60)
    beat = NodeAlive(node=name, lease=lease.id, since=time.time())
    await server.store.put(KEYS.alive(name), encode(beat), lease=lease.id)


def test_create_and_start_print_the_warning_and_go_on(hvc: Any, server: ApiServer) -> None:
    for name in ("a1", "a2"):  # 2 vCPUs, 2048 MiB each
        server.add_node(name)
        server.run(_alive(server, name))
    assert hvc("cluster", "config", "set", "admission.node_failures_tolerated=1").exit_code == 0
    first = hvc("vm", "create", "db-1", "--memory", "1500")
    assert first.exit_code == 0 and first.stderr == "", first.output  # a2 takes it if a1 fails
    assert server.store is not None
    server.run(server.store.put(KEYS.placement("db-1"), encode(Placement(node="a1", epoch=1))))

    second = hvc("vm", "create", "db-2", "--memory", "1500")
    assert second.exit_code == 0, second.output
    assert "created vm db-2" in second.stdout
    warning = " ".join(second.stderr.split())
    assert warning.startswith("warning: admission control: with db-2 the running HA VMs")
    assert "survive 0 node failure(s), fewer than the 1" in warning
    assert "warning" not in second.stdout

    stopped = hvc("vm", "create", "db-3", "--memory", "1500", "--stopped")
    assert stopped.exit_code == 0 and stopped.stderr == "", stopped.output  # not running: no check
    started = hvc("vm", "start", "db-3", "--json")
    assert started.exit_code == 0, started.output
    assert "admission control: with db-3" in " ".join(started.stderr.split())
    assert '"warnings"' in started.stdout  # JSON: the answer carries it too
