"""Virtual switches on this host: one Linux bridge per switch, made idempotently.

For each switch in the store the agent makes sure its bridge (named by
:func:`hvcluster.models.storage.bridge_name`, the same mapping the drivers use for VM taps)
exists and is up; for an external switch it also enslaves the uplink NIC when the host has
it. It touches no other interface: an interface of the bridge's name that is not a bridge,
an uplink already enslaved elsewhere, or an uplink that carries an address or the default
route (enslaving it would cut the host off the network, and with it every node's VMs once
their watchdogs fire) is reported as a problem and left alone. Each node also reports
which of its interfaces carry an address or the default route, so the API can refuse such
an uplink up front (:func:`interfaces_in_use`). A switch
it cannot make ready (not root, ``ip`` failing, the uplink missing) is reported missing with
the reason; nothing here ever raises out of :func:`check_switches`.

The ``ip`` calls go through :class:`Links`: :class:`IpLinks` runs iproute2 (optionally inside
a network namespace, which is how the tests run it), :class:`MemoryLinks` is its stateful
twin for in-process simulations.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hvcluster.host.run import run_command
from hvcluster.models.storage import Switch, SwitchType

log = logging.getLogger(__name__)

IP_TIMEOUT_S = 10.0


class LinkError(Exception):
    """An ``ip`` command failed; the message is what it said."""


@dataclass(frozen=True)
class Link:
    name: str
    kind: str  # "bridge", "veth", "" for a plain device
    up: bool
    master: str | None


class Links(ABC):
    """The few link operations switches need."""

    @abstractmethod
    async def get(self, name: str) -> Link | None:
        """The interface ``name``, or None if the host has none."""

    @abstractmethod
    async def in_use(self) -> dict[str, str]:
        """Interfaces that carry an address (IPv6 link-local aside: every link has one) or a
        default route, each with what it carries: never to be enslaved to a bridge."""

    @abstractmethod
    async def add_bridge(self, name: str) -> None: ...

    @abstractmethod
    async def set_up(self, name: str) -> None: ...

    @abstractmethod
    async def set_master(self, name: str, bridge: str) -> None: ...


class IpLinks(Links):
    """iproute2, in the host's namespace or (``netns``) in a named network namespace."""

    def __init__(self, netns: str | None = None, binary: str = "ip") -> None:
        self.prefix = [binary] + (["-n", netns] if netns else [])

    async def _ip(self, *args: str) -> str:
        return await run_command([*self.prefix, *args], IP_TIMEOUT_S, LinkError)

    async def get(self, name: str) -> Link | None:
        try:
            out = await self._ip("-d", "-j", "link", "show", "dev", name)
        except LinkError as e:
            if "does not exist" in str(e):
                return None
            raise
        try:
            info = json.loads(out)[0]
        except (ValueError, IndexError, TypeError) as e:
            raise LinkError(f"unexpected output of ip link show {name}: {out[:200]!r}") from e
        return Link(
            name=str(info.get("ifname", name)),
            kind=str(info.get("linkinfo", {}).get("info_kind", "")),
            up="UP" in info.get("flags", ()),
            master=info.get("master"),
        )

    async def in_use(self) -> dict[str, str]:
        carrying: dict[str, list[str]] = {}
        for link in _json_list(await self._ip("-j", "addr", "show"), "ip addr show"):
            for addr in link.get("addr_info") or ():
                if addr.get("family") == "inet6" and addr.get("scope") == "link":
                    continue
                if "local" in addr:
                    what = f"address {addr['local']}/{addr.get('prefixlen', '?')}"
                    carrying.setdefault(str(link.get("ifname")), []).append(what)
        for family in ("-4", "-6"):
            routes = await self._ip(family, "-j", "route", "show", "default")
            for route in _json_list(routes, "ip route show default"):
                hops = route.get("nexthops") or [route]
                for dev in {str(hop["dev"]) for hop in hops if hop.get("dev")}:
                    what = f"the default route ({'IPv6' if family == '-6' else 'IPv4'})"
                    carrying.setdefault(dev, []).append(what)
        return {name: ", ".join(what) for name, what in sorted(carrying.items())}

    async def add_bridge(self, name: str) -> None:
        await self._ip("link", "add", "name", name, "type", "bridge")

    async def set_up(self, name: str) -> None:
        await self._ip("link", "set", "dev", name, "up")

    async def set_master(self, name: str, bridge: str) -> None:
        await self._ip("link", "set", "dev", name, "master", bridge)


def _json_list(out: str, what: str) -> list[dict[str, Any]]:
    try:
        found = json.loads(out) if out.strip() else []
    except ValueError as e:
        raise LinkError(f"unexpected output of {what}: {out[:200]!r}") from e
    if not isinstance(found, list):
        raise LinkError(f"unexpected output of {what}: {out[:200]!r}")
    return [item for item in found if isinstance(item, dict)]


@dataclass
class MemoryLinks(Links):
    """A host's links in memory. ``denied`` makes every change fail as ``ip`` does for a
    user who is not root; ``carrying`` says what an interface carries (an address, the
    default route)."""

    links: dict[str, Link] = field(default_factory=dict)
    denied: bool = False
    carrying: dict[str, str] = field(default_factory=dict)

    def add_nic(self, name: str, carrying: str = "") -> None:
        self.links[name] = Link(name, "", True, None)
        if carrying:
            self.carrying[name] = carrying

    async def in_use(self) -> dict[str, str]:
        return dict(self.carrying)

    async def get(self, name: str) -> Link | None:
        return self.links.get(name)

    def _change(self, name: str) -> Link:
        if self.denied:
            raise LinkError("RTNETLINK answers: Operation not permitted")
        link = self.links.get(name)
        if link is None:
            raise LinkError(f'Cannot find device "{name}"')
        return link

    async def add_bridge(self, name: str) -> None:
        if self.denied:
            raise LinkError("RTNETLINK answers: Operation not permitted")
        if name in self.links:
            raise LinkError("RTNETLINK answers: File exists")
        self.links[name] = Link(name, "bridge", False, None)

    async def set_up(self, name: str) -> None:
        link = self._change(name)
        self.links[name] = Link(link.name, link.kind, True, link.master)

    async def set_master(self, name: str, bridge: str) -> None:
        link = self._change(name)
        self._change(bridge)
        self.links[name] = Link(link.name, link.kind, link.up, bridge)


async def ensure_switch(
    links: Links, switch: Switch, in_use: dict[str, str] | None = None
) -> str | None:
    """Make ``switch``'s bridge ready on this host; None when it is, else why not.
    ``in_use``: :meth:`Links.in_use`, when the caller asked already."""
    bridge = switch.bridge
    try:
        link = await links.get(bridge)
        if link is not None and link.kind != "bridge":
            kind = link.kind or "device"
            return f"{bridge} exists and is a {kind}, not a bridge; left alone"
        if link is None:
            await links.add_bridge(bridge)
            link = await links.get(bridge)
            if link is None:
                return f"{bridge} was not there after creating it"
        if not link.up:
            await links.set_up(bridge)
        if switch.type is SwitchType.EXTERNAL and switch.uplink:
            return await _uplink(links, switch.uplink, bridge, in_use)
    except LinkError as e:
        return str(e)
    return None


def refusal(uplink: str, carries: str) -> str:
    """Why an uplink that carries ``carries`` is not enslaved (said by agent and API)."""
    return (
        f"uplink {uplink} carries {carries}: enslaving it to a bridge would cut the host "
        "off the network; left alone (use an interface without addresses or routes)"
    )


async def _uplink(
    links: Links, uplink: str, bridge: str, in_use: dict[str, str] | None
) -> str | None:
    nic = await links.get(uplink)
    if nic is None:
        return f"uplink {uplink} is not present on this host"
    if nic.master == bridge:
        return None
    if nic.master is not None:
        return f"uplink {uplink} is already in {nic.master}; left alone"
    if nic.kind == "bridge":
        return f"uplink {uplink} is a bridge; left alone"
    carries = (in_use if in_use is not None else await links.in_use()).get(uplink)
    if carries:
        return refusal(uplink, carries)
    await links.set_master(uplink, bridge)
    if not nic.up:
        await links.set_up(uplink)
    return None


@dataclass(frozen=True)
class SwitchReport:
    ready: tuple[str, ...]  # switch names
    problems: dict[str, str]  # switch name -> why it is not ready
    in_use: dict[str, str] = field(default_factory=dict)  # see Links.in_use


async def interfaces_in_use(links: Links) -> dict[str, str]:
    """:meth:`Links.in_use`, or {} (logged) when ``ip`` cannot say: then an uplink is not
    enslaved either (its check asks again and reports the failure)."""
    try:
        return await links.in_use()
    except LinkError as e:
        log.warning("cannot tell which interfaces carry addresses or routes: %s", e)
        return {}


async def check_switches(links: Links, switches: Iterable[Switch]) -> SwitchReport:
    ready: list[str] = []
    problems: dict[str, str] = {}
    in_use = await interfaces_in_use(links)
    for switch in sorted(switches, key=lambda s: s.name):
        why = await ensure_switch(links, switch, in_use or None)
        if why is None:
            ready.append(switch.name)
        else:
            problems[switch.name] = why
    return SwitchReport(tuple(ready), problems, in_use)
