"""Virtual switches on this host: one Linux bridge per switch, made idempotently.

For each switch in the store the agent makes sure its bridge (named by
:func:`hvcluster.models.storage.bridge_name`, the same mapping the drivers use for VM taps)
exists and is up; for an external switch it also enslaves the uplink NIC when the host has
it. It touches no other interface: an interface of the bridge's name that is not a bridge,
or an uplink already enslaved elsewhere, is reported as a problem and left alone. A switch
it cannot make ready (not root, ``ip`` failing, the uplink missing) is reported missing with
the reason; nothing here ever raises out of :func:`check_switches`.

The ``ip`` calls go through :class:`Links`: :class:`IpLinks` runs iproute2 (optionally inside
a network namespace, which is how the tests run it), :class:`MemoryLinks` is its stateful
twin for in-process simulations.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field

from hvcluster.agent.run import run_command
from hvcluster.models.storage import Switch, SwitchType

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

    async def add_bridge(self, name: str) -> None:
        await self._ip("link", "add", "name", name, "type", "bridge")

    async def set_up(self, name: str) -> None:
        await self._ip("link", "set", "dev", name, "up")

    async def set_master(self, name: str, bridge: str) -> None:
        await self._ip("link", "set", "dev", name, "master", bridge)


@dataclass
class MemoryLinks(Links):
    """A host's links in memory. ``denied`` makes every change fail as ``ip`` does for a
    user who is not root."""

    links: dict[str, Link] = field(default_factory=dict)
    denied: bool = False

    def add_nic(self, name: str) -> None:
        self.links[name] = Link(name, "", True, None)

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


async def ensure_switch(links: Links, switch: Switch) -> str | None:
    """Make ``switch``'s bridge ready on this host; None when it is, else why not."""
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
            return await _uplink(links, switch.uplink, bridge)
    except LinkError as e:
        return str(e)
    return None


async def _uplink(links: Links, uplink: str, bridge: str) -> str | None:
    nic = await links.get(uplink)
    if nic is None:
        return f"uplink {uplink} is not present on this host"
    if nic.master == bridge:
        return None
    if nic.master is not None:
        return f"uplink {uplink} is already in {nic.master}; left alone"
    if nic.kind == "bridge":
        return f"uplink {uplink} is a bridge; left alone"
    await links.set_master(uplink, bridge)
    if not nic.up:
        await links.set_up(uplink)
    return None


@dataclass(frozen=True)
class SwitchReport:
    ready: tuple[str, ...]  # switch names
    problems: dict[str, str]  # switch name -> why it is not ready


async def check_switches(links: Links, switches: Iterable[Switch]) -> SwitchReport:
    ready: list[str] = []
    problems: dict[str, str] = {}
    for switch in sorted(switches, key=lambda s: s.name):
        why = await ensure_switch(links, switch)
        if why is None:
            ready.append(switch.name)
        else:
            problems[switch.name] = why
    return SwitchReport(tuple(ready), problems)
