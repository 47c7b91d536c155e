"""A node cut off the network (its link down, every process still running), in a lab where
each node has its own network namespace: its watchdog must kill its QEMU before the VM starts
elsewhere, the controller moves to a node that can still reach etcd, and when the link comes
back the node rejoins without running anything twice."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hvcluster.guestimage.image import cached_image
from hvcluster.guestimage.testguest import read_counter
from hvcluster.lab import processes
from tests.lab.conftest import CACHE, Lab, make_lab, wait_for
from tests.lab.test_qemu_failover import (
    TwoCopies,
    agent_cycled,
    counter_rises,
    create_guest,
    running,
    vm_pid,
)

pytestmark = [pytest.mark.lab, pytest.mark.qemu, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def netns_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if cached_image(CACHE) is None:
        pytest.fail("the test guest image is not built: run scripts/install (hvc image build)")
    yield from make_lab(tmp_path_factory.mktemp("netns-lab"), "qemu", network="netns")


def leader(lab: Lab, avoid: str | None = None) -> str:
    """The node of the latest controller election (waiting for a first one: the lab is up
    once its APIs answer, which can be before any controller is elected)."""

    def elected() -> list[dict[str, Any]]:
        return [e for e in lab.events(avoid) if e["event"]["kind"] == "controller.elected"]

    subject: str = wait_for(elected, 30, "a controller elected")[-1]["event"]["subject"]
    return subject.split("/")[1]


def test_nodes_live_in_their_own_namespaces(netns_lab: Lab) -> None:
    state = netns_lab.state
    assert state.net is not None
    addresses = {n.address for n in state.nodes}
    assert len(addresses) == 3 and all(a.startswith(state.net.subnet + ".") for a in addresses)
    for n in state.nodes:
        own = Path(f"/proc/{n.agent_pid}/ns/net").resolve()
        assert own != Path("/proc/self/ns/net").resolve()
        listed = netns_lab.get("/nodes")["nodes"]
        assert any(x["name"] == n.name and x["node"]["address"] == n.address for x in listed)


def test_a_partitioned_controller_node_is_fenced_and_its_vm_moves_once(netns_lab: Lab) -> None:
    lab = netns_lab
    cut = leader(lab)
    disk = create_guest(lab, "part-1", cut)
    wait_for(lambda: running(lab, "part-1"), 90, "part-1 running")
    old_pid = vm_pid(lab, cut, "part-1")
    assert old_pid
    before = counter_rises(disk, 0)
    try:
        with TwoCopies(lab, "part-1") as copies:
            lab.fault("partition", cut)
            wait_for(lambda: not processes.alive(old_pid), 15, "the watchdog to kill QEMU", 0.02)
            killed_at = time.monotonic()
            last = read_counter(disk)
            moved = wait_for(lambda: running(lab, "part-1", avoid=cut), 60, "recovery", 0.2)
            recovered_at = time.monotonic()
        assert copies.max_seen <= 1 and copies.samples > 50, "two QEMU processes ran at once"
        assert recovered_at > killed_at
        assert moved["node"] != cut and moved["placement"]["epoch"] == 2
        assert leader(lab, avoid=cut) != cut  # the controller moved to a connected node
        assert processes.alive(lab.state.node(cut).agent_pid)  # cut off, not dead
        assert last >= before and counter_rises(disk, last) > last
    finally:
        lab.fault("heal", cut)
    wait_for(
        lambda: any(n["name"] == cut and n["alive"] for n in lab.get("/nodes", avoid=cut)["nodes"]),
        30,
        f"{cut} back after the link came up",
    )
    agent_cycled(lab, cut)  # had it been confused, it would have started its old copy again
    assert vm_pid(lab, cut, "part-1") is None
    after = running(lab, "part-1")
    assert after is not None and after["node"] == moved["node"]
    assert after["placement"]["epoch"] == 2
    kinds = [
        e["event"]["kind"]
        for e in lab.events()
        if e["event"]["subject"] in (f"node/{cut}", "vm/part-1")
    ]
    assert "node.lease_lost" in kinds and kinds.count("vm.recovered") == 1
