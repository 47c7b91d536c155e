"""A node joining a running lab, and one evicted from it: what ``hvc node join`` and
``hvc node evict`` do on real hosts, with the lab starting the processes (the new node's
etcd member, watchdog and agent) and stopping them after the eviction.

In a netns lab the new node gets a namespace of its own (``n<k>`` at ``.<10 + k>``, as the
nodes ``hvc lab up`` made), and with a migration network its ``mig0`` link too (at
``.<10 + k>`` there, its agent's ``migration_address``); its etcd member runs there with it,
on etcd's usual ports, as on a real host; on loopback both take free ports. The etcd member
joins as a learner and is promoted by the cluster once caught up (its controller, or the
answer to the host asking: store/promotion.py); this waits for that as ``hvc node join``
does (asking), or, with ``ask=False``, as a host nobody waits on: until the controller's
``etcd.member.promoted``.
"""

from __future__ import annotations

import ssl
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from hvcluster.host import join as host_join
from hvcluster.host.pki import CertFiles
from hvcluster.lab import members, netns, processes
from hvcluster.lab.cluster import (
    LabError,
    _healthy,
    _make_node,
    _wait,
    _with_migration_address,
    start_node,
)
from hvcluster.lab.etcd import free_ports
from hvcluster.lab.state import LabEtcd, LabState, load, save
from hvcluster.models.errors import HvcError

Log = Callable[[str], None]
LOOPBACK = "127.0.0.1"


def _api(state: LabState, method: str, path: str, body: Any = None) -> Any:
    verify = ssl.create_default_context(cafile=state.ca or None)
    got = httpx.request(
        method, f"{state.api[0]}/api/v1{path}", json=body, headers=state.auth(), verify=verify,
        timeout=30.0,
    )  # fmt: skip
    if got.status_code >= 300:
        raise LabError(f"{method} {path}: {got.status_code} {got.text[:300]}")
    return got.json()


def join_node(
    state: LabState,
    etcd_member: bool = False,
    log: Log = print,
    timeout: float = 60.0,
    ask: bool = True,
) -> tuple[LabState, str]:
    """A new node ``n<k+1>`` joined with a join token (an etcd learner too if
    ``etcd_member``, waited for until the cluster promoted it: asking ``/join/promote`` as
    ``hvc node join`` does, or with ``ask=False`` leaving it to the controller), its agent
    started; the state and its name."""
    taken = {n.name for n in state.nodes}
    index = next(i for i in range(1, 100) if f"n{i}" not in taken)
    name = f"n{index}"
    made = _api(state, "POST", "/cluster/join-tokens", {"node": name, "etcd_member": etcd_member})
    api_port, client_port, peer_port = free_ports(3)
    address, migration = LOOPBACK, ""
    if state.net is not None:  # its own host: etcd's usual ports on its own address
        address, client_port, peer_port = state.net.node_ip(index), 2379, 2380
        netns.add_host(state.net, name, address)
    try:
        if state.net is not None and state.net.migration_subnet:  # a 2nd link, as the others
            migration = state.net.migration_ip(index)
            netns.add_migration_link(state.net, name, migration)
        ports = (api_port, client_port, peer_port)
        return _join(state, name, (address, migration), made["token"], ports, log, timeout, ask)
    except BaseException:
        if state.net is not None and name not in {n.name for n in _saved(state).nodes}:
            netns.remove_host(state.net, name)
        raise


def _saved(state: LabState) -> LabState:
    try:
        return load(Path(state.dir))
    except HvcError:
        return state


def _join(
    state: LabState,
    name: str,
    addresses: tuple[str, str],
    token: str,
    ports: tuple[int, int, int],
    log: Log,
    timeout: float,
    ask: bool,
) -> tuple[LabState, str]:
    """``addresses``: the new node's address, and its migration address ("": none)."""
    (address, migration), (api_port, client_port, peer_port) = addresses, ports
    started = time.monotonic()
    peer_url = f"https://{address}:{peer_port}"
    joined = host_join.join(
        state.api[0], token, address, Path(state.dir) / "joined" / name, peer_url
    )
    if joined.etcd is not None:
        client_url = f"https://{address}:{client_port}"
        data_dir = Path(state.dir) / "etcd" / name
        flags = host_join.etcd_flags(joined, data_dir, client_url, peer_url)
        member = LabEtcd(
            name=name,
            address=address,
            client_url=client_url,
            command=(
                "etcd",
                *flags,
                f"--heartbeat-interval={members.HEARTBEAT_MS}",
                f"--election-timeout={members.ELECTION_MS}",
                "--logger=zap",
                "--log-outputs=stderr",
                "--log-level=warn",
            ),
            data_dir=str(data_dir),
            log=str(data_dir.parent / f"{name}.log"),
        )
        member = members.spawn(state, member)  # (in its node's namespace: the same name)
        state = state.model_copy(
            update={
                "etcd_members": (*state.etcd_members, member),
                "etcd_pids": (*state.etcd_pids, member.pid),
                "etcd_endpoints": (*state.etcd_endpoints, client_url),
                "etcd_data_dirs": (*state.etcd_data_dirs, str(data_dir)),
            }
        )
        save(state)
        spawned = time.monotonic()
        if ask:
            done = host_join.promote(state.api[0], joined.ca, token, timeout, log)
            if not done.voting:
                raise LabError(f"etcd member {name} was not promoted: {done.reason}")
            said = done.reason
        else:
            said = _promoted_event(state, name, timeout, log)
        now = time.monotonic()
        log(
            f"etcd member {name} added as a learner; {said}: {now - spawned:.1f}s after its "
            f"etcd started, {now - started:.1f}s after the join request"
        )
    first = tomllib.loads(Path(state.nodes[0].config).read_text())
    certs = CertFiles(joined.ca, joined.cert, joined.key)
    node = _make_node(state, name, address, api_port, state.driver, Path(first["cache_dir"]), certs)
    if migration:
        node = _with_migration_address(node, migration)
    if joined.etcd is not None:  # its agent keeps its etcd's CRL up to date
        with open(node.config, "a") as conf:
            conf.write(f'etcd_crl = "{joined.crl}"\n')
    state = state.model_copy(
        update={"nodes": (*state.nodes, node), "api": (*state.api, state.api_url(node))}
    )
    save(state)
    state = start_node(state, name)
    url = state.api_url(node)
    _wait(lambda: _healthy(url, state.ca), timeout, f"{name}'s agent did not answer at {url}")
    log(f"node {name} joined (certificate {joined.serial}) and its agent is up at {url}")
    return state, name


def _promoted_event(state: LabState, name: str, timeout: float, log: Log) -> str:
    """The reason of the ``etcd.member.promoted`` event about ``name`` (saying each
    refusal seen meanwhile), once there is one."""
    end = time.monotonic() + timeout
    seen: set[int] = set()
    while time.monotonic() < end:
        for logged in _api(state, "GET", "/events?limit=200")["events"]:
            event = logged["event"]
            if event["subject"] != f"node/{name}" or logged["seq"] in seen:
                continue
            seen.add(logged["seq"])
            if event["kind"] == "etcd.member.promoted":
                return str(event["reason"])
            if event["kind"].startswith("etcd.member."):
                log(f"{event['kind']}: {event['reason']}")
        time.sleep(0.2)
    raise LabError(f"etcd member {name} was not promoted within {timeout:.0f}s ('hvc events')")


def evict_node(state: LabState, name: str, log: Log = print) -> tuple[LabState, dict[str, Any]]:
    """Evict ``name`` through the API (it must be drained already: the API refuses
    otherwise), then stop its agent, watchdog and etcd member; the state without them."""
    done = _api(state, "POST", f"/cluster/nodes/{name}/evict", {"reason": "lab eviction"})
    state = forget_node(state, name)
    log(f"node {name} evicted: {done}")
    return state, done


def forget_node(state: LabState, name: str) -> LabState:
    """After ``name`` was evicted: stop its agent, watchdog and etcd member; the state
    without them."""
    node = state.node(name)
    processes.terminate([node.agent_pid])
    processes.terminate([node.watchdog_pid], grace=2)
    gone = [m for m in state.etcd_members if m.name == name]
    processes.terminate([m.pid for m in gone])
    kept = tuple(m for m in state.etcd_members if m.name != name)
    state = state.model_copy(
        update={
            "nodes": tuple(n for n in state.nodes if n.name != name),
            "api": tuple(u for u in state.api if u != state.api_url(node)),
            "etcd_members": kept,
            "etcd_pids": tuple(m.pid for m in kept),
            "etcd_endpoints": tuple(m.client_url for m in kept),
            "etcd_data_dirs": tuple(m.data_dir for m in kept),
        }
    )
    save(state)
    if state.net is not None:
        netns.remove_host(state.net, name)
    return state
