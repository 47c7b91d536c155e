"""A node joining a running lab, and one evicted from it: what ``hvc node join`` and
``hvc node evict`` do on real hosts, with the lab starting the processes (the new node's
etcd member, watchdog and agent) and stopping them after the eviction.

Loopback labs only for now: a netns lab would need a namespace made for the new host.
"""

from __future__ import annotations

import ssl
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from hvcluster.host import join as host_join
from hvcluster.host.pki import CertFiles
from hvcluster.lab import members, processes
from hvcluster.lab.cluster import LabError, _healthy, _make_node, _wait, start_node
from hvcluster.lab.etcd import free_ports
from hvcluster.lab.state import LabEtcd, LabState, save

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
    state: LabState, etcd_member: bool = False, log: Log = print, timeout: float = 60.0
) -> tuple[LabState, str]:
    """A new node ``n<k+1>`` joined with a join token (an etcd learner too if
    ``etcd_member``, promoted once caught up), its agent started; the state and its name."""
    if state.net is not None:
        raise LabError("joining a node to a netns lab is not supported yet: use a loopback lab")
    taken = {n.name for n in state.nodes}
    name = next(f"n{i}" for i in range(1, 100) if f"n{i}" not in taken)
    made = _api(state, "POST", "/cluster/join-tokens", {"node": name, "etcd_member": etcd_member})
    api_port, client_port, peer_port = free_ports(3)
    peer_url = f"https://{LOOPBACK}:{peer_port}"
    joined = host_join.join(
        state.api[0], made["token"], LOOPBACK, Path(state.dir) / "joined" / name, peer_url
    )
    if joined.etcd is not None:
        client_url = f"https://{LOOPBACK}:{client_port}"
        data_dir = Path(state.dir) / "etcd" / name
        flags = host_join.etcd_flags(joined, data_dir, client_url, peer_url)
        member = LabEtcd(
            name=name,
            address=LOOPBACK,
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
        member = members.spawn(state, member)
        state = state.model_copy(
            update={
                "etcd_members": (*state.etcd_members, member),
                "etcd_pids": (*state.etcd_pids, member.pid),
                "etcd_endpoints": (*state.etcd_endpoints, client_url),
                "etcd_data_dirs": (*state.etcd_data_dirs, str(data_dir)),
            }
        )
        save(state)
        host_join.promote(state.api[0], joined.ca, made["token"], timeout)
        log(f"etcd member {name} added as a learner and promoted ({client_url})")
    first = tomllib.loads(Path(state.nodes[0].config).read_text())
    certs = CertFiles(joined.ca, joined.cert, joined.key)
    node = _make_node(
        state, name, LOOPBACK, api_port, state.driver, Path(first["cache_dir"]), certs
    )
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
    return state
