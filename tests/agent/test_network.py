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

from hvcluster.agent.network import IpLinks, MemoryLinks, check_switches, ensure_switch
from hvcluster.models.storage import Switch, SwitchType, bridge_name

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
