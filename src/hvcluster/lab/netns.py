"""The lab's network: each node and each etcd member in its own network namespace, linked by
a veth pair to one bridge in this host's namespace. A node's link can then be cut like a pulled
cable (``hvc lab fault partition``): its agent, watchdog and VMs keep running, cut off from
etcd and from the other nodes. A partition from only the etcd members, or only the other
nodes, is an nftables table in the node's namespace that drops traffic to and from their
addresses (a dropped packet, as on a cut link: no "connection refused").

Addresses come from ``10.213.<k>.0/24`` (``<k>`` chosen so no address of this host is in it):
the bridge is ``.1``, etcd member ``etcd<j>`` is ``.<2 + j>``, node ``n<i>`` is ``.<10 + i>``.
Traffic stays inside the namespaces the lab made. Needs root, iproute2, nsenter (util-linux)
and nft.

With a migration network (``hvc lab up --migration-network``), each node has a second link,
``mig0``, to a second bridge (``<bridge>m``, no address of this host on it) in
``10.214.<k>.0/24``, node ``n<i>`` at ``.<10 + i>``: its agent's ``migration_address``, so
QEMU's migration streams go over that link while the API and etcd stay on the first, as a
real cluster's separate migration network does.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping, Sequence

from hvcluster.models.base import Model
from hvcluster.models.errors import HvcError

PREFIX = "10.213"
MIGRATION_PREFIX = "10.214"
MIGRATION_DEV = "mig0"  # a node's link to the migration network, in its namespace
NFT_TABLE = "hvclab"  # in a node's namespace: what 'partition --from etcd|nodes' drops
COMMAND_TIMEOUT_S = 10.0


class NetnsError(HvcError):
    """The lab's network could not be set up or changed."""


class LabNet(Model):
    bridge: str  # in this host's namespace; also the stem of every other name
    subnet: str  # "10.213.<k>"
    migration_subnet: str = ""  # "10.214.<k>" with a migration network; "": none

    @property
    def host_ip(self) -> str:
        return f"{self.subnet}.1"

    def node_ip(self, index: int) -> str:
        """The address of the ``index``-th node (1-based)."""
        return f"{self.subnet}.{10 + index}"

    def migration_ip(self, index: int) -> str:
        """The ``index``-th node's address on the migration network ("" without one)."""
        return f"{self.migration_subnet}.{10 + index}" if self.migration_subnet else ""

    @property
    def migration_bridge(self) -> str:
        return f"{self.bridge}m"

    def migration_veth(self, node: str) -> str:
        """The host's end of ``node``'s migration link (at most 15 characters)."""
        return f"{self.migration_bridge}{node}"

    def etcd_ip(self, index: int) -> str:
        """The address of etcd member ``index`` (0-based; at most 8 members fit)."""
        return f"{self.subnet}.{2 + index}"

    def netns(self, node: str) -> str:
        return f"{self.bridge}-{node}"

    def veth(self, node: str) -> str:
        """The host's end of ``node``'s link (at most 15 characters)."""
        return f"{self.bridge}{node}"

    def enter(self, node: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run in ``node``'s namespace (only the network namespace changes: nsenter
        execs it, so the pid is the command's own)."""
        return ["nsenter", f"--net=/run/netns/{self.netns(node)}", "--", *argv]


def _ip(*args: str, check: bool = True) -> str:
    try:
        done = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetnsError(f"'ip {' '.join(args)}' could not run: {e}") from e
    if check and done.returncode != 0:
        raise NetnsError(f"'ip {' '.join(args)}' failed: {done.stderr.strip()}")
    return done.stdout


def choose(seed: str) -> LabNet:
    """A bridge name derived from ``seed`` (the lab dir) and a /24 no address here is in."""
    digest = hashlib.sha256(seed.encode()).hexdigest()
    bridge = f"hvl{digest[:5]}"
    used = _ip("-4", "-o", "addr", "show")
    start = int(digest[5:7], 16)
    for step in range(256):
        k = (start + step) % 254 + 1
        subnet = f"{PREFIX}.{k}"
        if f" {subnet}." not in used:
            return LabNet(bridge=bridge, subnet=subnet)
    raise NetnsError(f"no free /24 left in {PREFIX}.0.0/16 for the lab network")


def _batch(lines: Sequence[str], netns: str | None = None, check: bool = True) -> None:
    """Several ``ip`` commands in one process (``ip -batch``), in ``netns`` if given: a lab's
    network is ~50 of them, and one process each cost 0.3-0.6 s a lab. Without ``check``
    every line runs (``-force``) and what fails (already gone) is fine."""
    where = ["-n", netns] if netns else []
    argv = ["ip", *where, *(["-force"] if not check else []), "-batch", "-"]
    try:
        done = subprocess.run(
            argv,
            input="".join(f"{line}\n" for line in lines),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetnsError(f"'{' '.join(argv)}' could not run: {e}") from e
    if check and done.returncode != 0:
        raise NetnsError(f"'{' '.join(argv)}' failed: {done.stderr.strip()} in {list(lines)}")


def _link_lines(net: LabNet, name: str) -> list[str]:
    """In this host's namespace: ``name``'s namespace and its link to the bridge."""
    ns, veth = net.netns(name), net.veth(name)
    return [
        f"netns add {ns}",
        f"link add {veth} type veth peer name eth0 netns {ns}",
        f"link set {veth} master {net.bridge} up",
    ]


def _inside_lines(address: str) -> list[str]:
    """In a host's own namespace: its end of the link, addressed and up."""
    return [f"addr add {address}/24 dev eth0", "link set eth0 up", "link set lo up"]


def create(net: LabNet, hosts: Mapping[str, str]) -> None:
    """Make the bridge and one namespace + link per host (``hosts``: name -> its address)."""
    destroy(net, list(hosts))  # a crashed earlier lab may have left pieces behind
    bridge = [
        f"link add {net.bridge} type bridge",
        f"addr add {net.host_ip}/24 dev {net.bridge}",
        f"link set {net.bridge} up",
    ]
    _batch(bridge + [line for name in hosts for line in _link_lines(net, name)])
    for name, address in hosts.items():
        _batch(_inside_lines(address), netns=net.netns(name))


def with_migration_network(net: LabNet) -> LabNet:
    """``net`` with a migration subnet: ``10.214.<k>`` for the first ``k`` (from the main
    subnet's) that no address of this host is in."""
    used = _ip("-4", "-o", "addr", "show")
    start = int(net.subnet.rsplit(".", 1)[1])
    for step in range(256):
        subnet = f"{MIGRATION_PREFIX}.{(start + step) % 254 + 1}"
        if f" {subnet}." not in used:
            return net.model_copy(update={"migration_subnet": subnet})
    raise NetnsError(f"no free /24 left in {MIGRATION_PREFIX}.0.0/16 for a migration network")


def create_migration_network(net: LabNet, nodes: Mapping[str, str]) -> None:
    """The migration bridge and a ``mig0`` link to it in each node's namespace (``nodes``:
    name -> its migration address); the namespaces exist already (:func:`create`)."""
    bridge = net.migration_bridge
    lines = [f"link add {bridge} type bridge", f"link set {bridge} up"]
    _batch(lines + [line for name in nodes for line in _migration_link_lines(net, name)])
    for name, address in nodes.items():
        _batch(_migration_inside_lines(address), netns=net.netns(name))


def add_migration_link(net: LabNet, name: str, address: str) -> None:
    """A ``mig0`` link to the migration bridge for one more host (a node joining a running
    lab that has a migration network), addressed ``address``; its namespace exists."""
    _batch(_migration_link_lines(net, name))
    _batch(_migration_inside_lines(address), netns=net.netns(name))


def _migration_link_lines(net: LabNet, name: str) -> list[str]:
    """In this host's namespace: ``name``'s ``mig0`` link to the migration bridge."""
    veth = net.migration_veth(name)
    return [
        f"link add {veth} type veth peer name {MIGRATION_DEV} netns {net.netns(name)}",
        f"link set {veth} master {net.migration_bridge} up",
    ]


def _migration_inside_lines(address: str) -> list[str]:
    return [f"addr add {address}/24 dev {MIGRATION_DEV}", f"link set {MIGRATION_DEV} up"]


def link_bytes(net: LabNet, node: str, dev: str) -> tuple[int, int]:
    """(received, sent) bytes of ``dev`` in ``node``'s namespace (``eth0``: its main link,
    :data:`MIGRATION_DEV`: its migration link)."""
    out = _ip("-n", net.netns(node), "-j", "-s", "link", "show", dev)
    stats = json.loads(out)[0]["stats64"]
    return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])


def add_host(net: LabNet, name: str, address: str) -> None:
    """One more host's namespace, linked to the bridge (a node joining a running lab)."""
    _batch(_link_lines(net, name))
    _batch(_inside_lines(address), netns=net.netns(name))


def _remove_lines(net: LabNet, name: str) -> list[str]:
    mig = [f"link del {net.migration_veth(name)}"] if net.migration_subnet else []
    return [f"link del {net.veth(name)}", *mig, f"netns del {net.netns(name)}"]


def remove_host(net: LabNet, name: str) -> None:
    """Remove one host's link and namespace (an evicted node's); gone already is fine."""
    _batch(_remove_lines(net, name), check=False)


def _nft(net: LabNet, node: str, script: str, check: bool = True) -> None:
    argv = net.enter(node, ["nft", "-f", "-"])
    try:
        done = subprocess.run(
            argv, input=script, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetnsError(f"nft in {net.netns(node)} could not run: {e}") from e
    if check and done.returncode != 0:
        raise NetnsError(f"nft in {net.netns(node)} failed: {done.stderr.strip()}")


def block(net: LabNet, node: str, addresses: Sequence[str]) -> None:
    """Drop every packet between ``node`` and ``addresses`` (its link stays up)."""
    unblock(net, node)
    peers = ", ".join(addresses)
    _nft(
        net,
        node,
        f"table inet {NFT_TABLE} {{\n"
        f"  chain in {{ type filter hook input priority 0; ip saddr {{ {peers} }} drop; }}\n"
        f"  chain out {{ type filter hook output priority 0; ip daddr {{ {peers} }} drop; }}\n"
        "}\n",
    )


def unblock(net: LabNet, node: str) -> None:
    """Remove what :func:`block` added to ``node``'s namespace (none is fine)."""
    _nft(net, node, f"delete table inet {NFT_TABLE}\n", check=False)


def set_link(net: LabNet, node: str, up: bool) -> None:
    """Connect (``up``) or cut ``node``'s link to the bridge."""
    _ip("link", "set", net.veth(node), "up" if up else "down")


def link_up(net: LabNet, node: str) -> bool:
    return "state DOWN" not in _ip("-o", "link", "show", net.veth(node))


def destroy(net: LabNet, nodes: Sequence[str]) -> None:
    """Remove what :func:`create` made; what is already gone is fine."""
    lines = [line for node in nodes for line in _remove_lines(net, node)]
    extra = [f"link del {net.migration_bridge}"] if net.migration_subnet else []
    _batch([*lines, f"link del {net.bridge}", *extra], check=False)
