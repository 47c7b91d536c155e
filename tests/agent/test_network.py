"""Switch bridges made by the agent, against real bridges in a network namespace created
(and deleted) by each test: never in the host's own namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from hvcluster.agent.resources import HostResources, Resources
from hvcluster.drivers.sim import SimDriver
from hvcluster.host.network import IpLinks, MemoryLinks, check_switches, ensure_switch
from hvcluster.models.base import encode
from hvcluster.models.storage import Switch, SwitchType, bridge_name
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    name = f"hvc-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True)


def link(ns: str, name: str) -> dict[str, object] | None:
    out = subprocess.run(
        ["ip", "-n", ns, "-d", "-j", "link", "show", "dev", name], capture_output=True, text=True
    )
    if out.returncode != 0:
        return None
    found: dict[str, object] = json.loads(out.stdout)[0]
    return found


def default_route(ns: str) -> str:
    out = subprocess.run(["ip", "-n", ns, "route", "show", "default"], capture_output=True)
    return out.stdout.decode()


def kind(info: dict[str, object] | None) -> str | None:
    assert info is not None
    linkinfo = info.get("linkinfo")
    return linkinfo.get("info_kind") if isinstance(linkinfo, dict) else None


async def test_internal_switch_bridge_is_made_up_and_idempotent(netns: str) -> None:
    links = IpLinks(netns)
    switch = Switch(name="backend", type=SwitchType.INTERNAL)
    assert await ensure_switch(links, switch) is None
    info = link(netns, "hvc-backend")
    assert kind(info) == "bridge" and "UP" in info["flags"]  # type: ignore[index, operator]
    assert await ensure_switch(links, switch) is None  # again: nothing to do, no error
    report = await check_switches(links, [switch, Switch(name="a-very-long-switch-name")])
    assert report.ready == ("a-very-long-switch-name", "backend") and report.problems == {}
    assert kind(link(netns, bridge_name("a-very-long-switch-name"))) == "bridge"


async def test_external_switch_enslaves_its_uplink_when_present(netns: str) -> None:
    ip(netns, "link", "add", "up0", "type", "veth", "peer", "name", "up0p")
    links = IpLinks(netns)
    lan = Switch(name="lan", type=SwitchType.EXTERNAL, uplink="up0")
    assert await ensure_switch(links, lan) is None
    assert link(netns, "up0")["master"] == "hvc-lan"  # type: ignore[index]
    assert link(netns, "up0p").get("master") is None  # type: ignore[union-attr]
    assert await ensure_switch(links, lan) is None
    missing = Switch(name="wan", type=SwitchType.EXTERNAL, uplink="eth9")
    why = await ensure_switch(links, missing)
    assert why == "uplink eth9 is not present on this host"
    assert kind(link(netns, "hvc-wan")) == "bridge"  # made, but the switch is not ready
    taken = Switch(name="dmz", type=SwitchType.EXTERNAL, uplink="up0")
    why = await ensure_switch(links, taken)
    assert why is not None and "already in hvc-lan" in why
    assert link(netns, "up0")["master"] == "hvc-lan"  # type: ignore[index]


async def test_an_interface_of_the_bridges_name_that_is_no_bridge_is_left_alone(
    netns: str,
) -> None:
    ip(netns, "link", "add", "hvc-odd", "type", "veth", "peer", "name", "oddp")
    why = await ensure_switch(IpLinks(netns), Switch(name="odd"))
    assert why == "hvc-odd exists and is a veth, not a bridge; left alone"
    assert kind(link(netns, "hvc-odd")) == "veth"
    assert "UP" not in link(netns, "hvc-odd")["flags"]  # type: ignore[index, operator]


async def test_failures_are_reported_never_raised(netns: str) -> None:
    no_ip = await ensure_switch(IpLinks(netns, binary="/nonexistent/ip"), Switch(name="x"))
    assert no_ip is not None and "cannot run /nonexistent/ip" in no_ip
    gone = await ensure_switch(IpLinks("hvc-test-no-such-ns"), Switch(name="x"))
    assert gone is not None and "hvc-test-no-such-ns" in gone
    denied = await check_switches(MemoryLinks(denied=True), [Switch(name="x")])
    assert denied.ready == () and "not permitted" in denied.problems["x"]


async def test_an_uplink_carrying_an_address_or_the_default_route_is_never_enslaved(
    netns: str,
) -> None:
    ip(netns, "link", "set", "lo", "up")
    ip(netns, "link", "add", "mgmt0", "type", "veth", "peer", "name", "mgmt0p")
    ip(netns, "addr", "add", "192.0.2.10/24", "dev", "mgmt0")
    ip(netns, "link", "set", "mgmt0", "up")
    ip(netns, "link", "add", "wan0", "type", "veth", "peer", "name", "wan0p")
    ip(netns, "link", "set", "wan0", "up")
    ip(netns, "route", "add", "default", "via", "192.0.2.1", "dev", "wan0", "onlink")
    ip(netns, "link", "add", "free0", "type", "veth", "peer", "name", "free0p")
    ip(netns, "link", "set", "free0", "up")  # up: an IPv6 link-local address, nothing else
    links = IpLinks(netns)
    in_use = await links.in_use()
    assert in_use["mgmt0"] == "address 192.0.2.10/24"
    assert in_use["wan0"] == "the default route (IPv4)"
    assert "free0" not in in_use

    report = await check_switches(
        links,
        [
            Switch(name="lan", type=SwitchType.EXTERNAL, uplink="mgmt0"),
            Switch(name="wan", type=SwitchType.EXTERNAL, uplink="wan0"),
            Switch(name="ok", type=SwitchType.EXTERNAL, uplink="free0"),
        ],
    )
    assert report.ready == ("ok",)
    assert report.problems["lan"].startswith("uplink mgmt0 carries address 192.0.2.10/24:")
    assert "would cut the host off the network" in report.problems["lan"]
    assert report.problems["wan"].startswith("uplink wan0 carries the default route (IPv4):")
    assert report.in_use["mgmt0"] == "address 192.0.2.10/24"
    for nic in ("mgmt0", "wan0"):
        assert link(netns, nic).get("master") is None  # type: ignore[union-attr]
    assert link(netns, "free0")["master"] == "hvc-ok"  # type: ignore[index]
    assert "dev wan0" in default_route(netns)  # the host keeps its way out


async def test_the_node_reports_busy_interfaces_and_the_refused_switch() -> None:
    store = MemoryStore()
    keys = Keys("t")
    links = MemoryLinks()
    links.add_nic("eth0", carrying="address 10.0.0.5/24, the default route (IPv4)")
    said: list[tuple[str, str]] = []
    reports: list[Resources] = []

    async def report(r: Resources) -> None:
        reports.append(r)

    async def say(kind: str, subject: str, reason: str) -> None:
        said.append((kind, reason))

    await store.put(
        keys.switch("lan"), encode(Switch(name="lan", type=SwitchType.EXTERNAL, uplink="eth0"))
    )
    resources = HostResources(store, keys, "n1", links, SimDriver(), report, say)
    found = await resources.check()
    assert found.switches == ()
    assert found.switch_problems["lan"].startswith(
        "uplink eth0 carries address 10.0.0.5/24, the default route (IPv4):"
    )
    assert found.interfaces_in_use == {"eth0": "address 10.0.0.5/24, the default route (IPv4)"}
    assert reports[-1].fields()["interfaces_in_use"] == found.interfaces_in_use
    assert links.links["eth0"].master is None
    assert [k for k, _ in said] == ["switch.missing"] and "carries" in said[0][1]
    await store.close()
