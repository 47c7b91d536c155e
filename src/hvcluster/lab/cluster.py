"""``hvc lab``: a whole cluster on one machine. 1, 3 or 5 etcd members and N agents (each with
its watchdog), as detached processes, each node with its own run dir, so that faults are real:
kill -9 a host, SIGSTOP an agent, restart one, kill etcd members (lab/faults.py). On loopback
ports, or (``network="netns"``) each node and each etcd member in its own network namespace,
so a node's link can be cut too. As root (unless ``private_mounts=False``), each node's
processes (agent, watchdog, VMs) also get a mount namespace of their own in which the lab
dir holds only that node's run dir, its certificate files and the shared volume
(lab/hostns.py): no node can read another's files.

Everything lives under one lab dir (default ``/run/hvc-lab``); ``lab.json`` there says what
runs, so later commands (and ``hvc`` itself, to find the API) can find it.

The lab runs as a real cluster should: etcd with TLS on client and peer links and client
certificates required, every API over https. ``<lab dir>/pki`` holds the lab's CA
(``ca.crt``), a certificate per etcd member and per node (the node's agent presents it to
etcd and serves its API with it), and ``client.crt``/``client.key`` for etcdctl and
``hvc store check``. Keys are 0600.
"""

from __future__ import annotations

import functools
import os
import shutil
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import httpx

from hvcluster.drivers.runtime import running_pids
from hvcluster.host.pki import Authority, CertFiles
from hvcluster.lab import hostns, members, netns, processes
from hvcluster.lab.etcd import free_ports
from hvcluster.lab.state import DEFAULT_LAB_DIR, LabNode, LabState, load, save
from hvcluster.models.config import ClusterConfig
from hvcluster.models.errors import HvcError
from hvcluster.models.join import ClusterCa
from hvcluster.models.token import Role, issue
from hvcluster.store.keys import Keys

Driver = Literal["qemu", "sim"]
Network = Literal["loopback", "netns"]
Log = Callable[[str], None]
HVC = [sys.executable, "-m", "hvcluster"]


class LabError(HvcError):
    pass


def running_lab(lab_dir: Path) -> LabState | None:
    try:
        state = load(lab_dir)
    except HvcError:
        return None
    pids = [*state.etcd_pids, *(n.agent_pid for n in state.nodes)]
    return state if any(processes.alive(p) for p in pids) else None


def up(
    nodes: int = 3,
    driver: Driver = "qemu",
    lab_dir: Path = DEFAULT_LAB_DIR,
    cache_dir: Path = Path("/var/cache/hvcluster"),
    config: ClusterConfig | None = None,
    log: Log = print,
    timeout: float = 60.0,
    network: Network = "loopback",
    etcd_members: int = 3,
    private_mounts: bool | None = None,
    migration_network: bool = False,
) -> LabState:
    """Start ``etcd_members`` etcd members and ``nodes`` agents; return once every API
    answers. ``private_mounts``: a mount namespace per node (lab/hostns.py; needs root);
    None: as root, yes. ``migration_network`` (netns only): a second link per node that
    migrations go over (its agent's ``migration_address``; lab/netns.py)."""
    if nodes < 1:
        raise LabError("a lab needs at least one node")
    if private_mounts is None:
        private_mounts = can_make_namespaces()
    elif private_mounts and not can_make_namespaces():
        raise LabError("private mounts need root (a mount namespace per node): run as root")
    if running_lab(lab_dir) is not None:
        raise LabError(f"a lab is already running in {lab_dir}: 'hvc lab down' first")
    if lab_dir.exists():
        shutil.rmtree(lab_dir)
    lab_dir.mkdir(parents=True)
    config = lab_config(config or ClusterConfig(), lab_dir / "shared", cache_dir)
    ports = free_ports(nodes + 2 * etcd_members)
    names = [f"n{i + 1}" for i in range(nodes)]
    net = netns.choose(str(lab_dir.resolve())) if network == "netns" else None
    if migration_network and net is None:
        raise LabError("a migration network is a second link per node: it needs --network netns")
    if migration_network and net is not None:
        net = netns.with_migration_network(net)
    pki = Authority(lab_dir / "pki", "hvcluster lab CA")
    client = pki.issue("client")
    etcd = members.plan(lab_dir, etcd_members, net, pki, client, ports[nodes:])
    if net is not None:
        hosts = {m.name: m.address for m in etcd} | {
            n: net.node_ip(i + 1) for i, n in enumerate(names)
        }
        try:
            netns.create(net, hosts)
            if net.migration_subnet:
                mig = {n: net.migration_ip(i + 1) for i, n in enumerate(names)}
                netns.create_migration_network(net, mig)
        except BaseException:
            netns.destroy(net, list(hosts))
            raise
        log(f"network: bridge {net.bridge} {net.host_ip}/24, a namespace per node and member")
    if private_mounts:
        log("mounts: a namespace per node (it sees its run dir, certificates, shared volume)")
    state = LabState(
        cluster="lab",
        dir=str(lab_dir),
        driver=driver,
        etcd_endpoints=tuple(m.client_url for m in etcd),
        etcd_data_dirs=tuple(m.data_dir for m in etcd),
        etcd_members=tuple(etcd),
        shared_dir=str(lab_dir / "shared"),
        net=net,
        private_mounts=private_mounts,
        ca=str(client.ca),
        client_cert=str(client.cert),
        client_key=str(client.key),
        profile=config.profile() or "custom",
        fence_after_s=config.fence_after_s,
    )
    for member in etcd:
        state = state.with_member(members.spawn(state, member))
    save(state)
    try:
        # The nodes' certificates and configs while etcd starts (~0.3 s each, openssl).
        lab_nodes = []
        for i, name in enumerate(names):
            address = net.node_ip(i + 1) if net else "127.0.0.1"
            certs = pki.issue(name, [address, "127.0.0.1", "localhost"])
            node = _make_node(state, name, address, ports[i], driver, cache_dir, certs)
            if net is not None and net.migration_subnet:
                node = _with_migration_address(node, net.migration_ip(i + 1))
            lab_nodes.append(node)
        _wait(
            functools.partial(_etcd_healthy, state),
            timeout,
            f"etcd did not become healthy; see {lab_dir}/etcd/*.log",
        )
        log(
            f"etcd: {len(etcd)} member(s) on {', '.join(state.etcd_endpoints)}; "
            f"CA and certificates in {pki.dir}"
        )
        state = _bootstrap(state, config, pki)
        save(state)
        Path(state.shared_dir).mkdir(parents=True, exist_ok=True)
        state = state.model_copy(
            update={
                "nodes": tuple(lab_nodes),
                "api": tuple(state.api_url(n) for n in lab_nodes),
            }
        )
        save(state)
        state = start_nodes(state, names)
        for url in state.api:
            _wait(
                functools.partial(_healthy, url, state.ca),
                timeout,
                f"agent API {url} did not answer; see {lab_dir}/nodes/*/agent.log",
            )
        log(f"{nodes} agents up ({driver} driver): " + ", ".join(state.api))
        return state
    except LabError as e:
        # The logs go with the lab dir: say their last lines (what failed) first.
        said = _log_tails(lab_dir)
        down(lab_dir, log=lambda _: None)
        raise LabError(f"{e}{said}") from None
    except BaseException:
        down(lab_dir, log=lambda _: None)
        raise


def can_make_namespaces() -> bool:
    """Root on Linux: what a namespace per node (network or mount) needs."""
    return sys.platform == "linux" and os.geteuid() == 0


def _log_tails(lab_dir: Path, lines: int = 8) -> str:
    """The last lines of every agent's and etcd member's log, for an error message."""
    said = []
    for log in sorted([*lab_dir.glob("nodes/*/agent.log"), *lab_dir.glob("etcd/*.log")]):
        try:
            tail = log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        said.append(f"\n--- {log.relative_to(lab_dir)}:\n" + "\n".join(tail))
    return "".join(said)


def _etcd_healthy(state: LabState) -> bool:
    """Every member answers and has a leader."""
    return all(members.healthy(state, m, 0.5) for m in state.etcd_members)


def lab_config(config: ClusterConfig, shared: Path, cache_dir: Path) -> ClusterConfig:
    """``config`` allowing disks in the lab's shared directory (the demo's disks are files
    there, outside any volume) and the test guest's kernel and initrd from the image cache."""
    dirs = (*config.allowed_disk_dirs, str(shared.absolute()), str(cache_dir.absolute()))
    return ClusterConfig.model_validate(
        config.model_dump() | {"allowed_disk_dirs": tuple(dict.fromkeys(dirs))}
    )


def _bootstrap(state: LabState, config: ClusterConfig, pki: Authority) -> LabState:
    """Write the cluster config, the lab's admin token (hashed) and its CA (so that nodes
    can join: lab/joining.py) straight into etcd (the lab's one use of etcd other than
    through the API, as 'hvc cluster init' does); the state, with that token."""
    endpoints = ",".join(state.etcd_endpoints)
    keys = Keys(state.cluster)
    token, bearer = issue("admin", Role.ADMIN, time.time(), created_by="hvc lab up")
    ca = ClusterCa(cert_pem=pki.ca_cert.read_text(), key_pem=pki.ca_key.read_text())
    writes = (
        (keys.config, config.model_copy(update={"name": state.cluster}).model_dump_json()),
        (keys.token(token.name), token.model_dump_json()),
        (keys.cluster_ca, ca.model_dump_json()),
    )
    tls = [f"--cacert={state.ca}", f"--cert={state.client_cert}", f"--key={state.client_key}"]
    for key, value in writes:
        subprocess.run(
            ["etcdctl", f"--endpoints={endpoints}", *(tls if state.ca else []), "put", key, value],
            check=True,
            capture_output=True,
            timeout=10,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        )
    return state.model_copy(update={"token": bearer})


def _make_node(
    state: LabState,
    name: str,
    address: str,
    port: int,
    driver: Driver,
    cache: Path,
    certs: CertFiles,
) -> LabNode:
    run_dir = Path(state.dir) / "nodes" / name
    run_dir.mkdir(parents=True)
    conf = run_dir / "agent.toml"
    etcd = ", ".join(f'"{e}"' for e in state.etcd_endpoints)
    conf.write_text(
        f'node = "{name}"\ncluster = "{state.cluster}"\netcd = [{etcd}]\n'
        f'address = "{address}"\napi_host = "{address}"\napi_port = {port}\n'
        f'run_dir = "{run_dir}"\ndriver = "{driver}"\ncache_dir = "{cache}"\n'
        f'etcd_ca = "{certs.ca}"\netcd_cert = "{certs.cert}"\netcd_key = "{certs.key}"\n'
        f'api_cert = "{certs.cert}"\napi_key = "{certs.key}"\napi_ca = "{certs.ca}"\n'
    )
    return LabNode(
        name=name, run_dir=str(run_dir), config=str(conf), api_port=port, address=address
    )


def _with_migration_address(node: LabNode, address: str) -> LabNode:
    """``node`` whose agent's migrations listen on ``address`` (its config says so)."""
    with Path(node.config).open("a") as conf:
        conf.write(f'migration_address = "{address}"\n')
    return node.model_copy(update={"migration_address": address})


def start_node(state: LabState, name: str, timeout: float = 10.0) -> LabState:
    """Start the watchdog (if not running; with the cluster's ``fence_after``) and the agent
    of ``name``. With private mounts the watchdog makes the node's mount namespace and the
    agent (so its VMs too) joins it: one host's processes see one host's files."""
    return start_nodes(state, [name], timeout)


def start_nodes(state: LabState, names: list[str], timeout: float = 10.0) -> LabState:
    """:func:`start_node` for each of ``names``, side by side: every watchdog is started
    before the first namespace is waited for, and every agent before any API is (``lab up``
    waited ~0.3 s per node for them one after another)."""
    watchdogs = {}
    for name in names:
        node = state.node(name)
        wd = node.watchdog_pid
        if not processes.alive(wd):
            wd = _spawn_watchdog(state, node)
            watchdogs[name] = wd
        state = state.with_node(node.model_copy(update={"watchdog_pid": wd}))
    save(state)  # what 'lab down' stops, should a namespace not be made
    if state.private_mounts:
        for name, wd in watchdogs.items():
            _wait(
                functools.partial(hostns.ready, wd, state.dir),
                timeout,
                f"{name}'s mount namespace was not made; see {state.node(name).run_dir}"
                "/watchdog.out",
            )
    for name in names:
        node = state.node(name)
        agent = node.agent_pid
        if not processes.alive(agent):
            net = functools.partial(state.net.enter, name) if state.net else list
            argv = [sys.executable, "-m", "hvcluster.agent", "--config", node.config]
            if state.private_mounts:
                argv = hostns.join(node.watchdog_pid, argv)
            agent = processes.spawn(net(argv), Path(node.run_dir) / "agent.log")
        state = state.with_node(node.model_copy(update={"agent_pid": agent}))
    save(state)
    return state


def _spawn_watchdog(state: LabState, node: LabNode) -> int:
    """Start the watchdog of ``node`` (in its network namespace; making its mount namespace
    with private mounts, which :func:`hostns.ready` says is made); its pid."""
    run_dir = Path(node.run_dir)
    argv = [
        sys.executable,
        "-m",
        "hvcluster.watchdog",
        "--run-dir",
        str(run_dir),
        "--fence-after",
        str(state.fence_after_s),
    ]
    if state.private_mounts:
        argv = hostns.wrap(state.dir, node_paths(state, node), argv)
    if state.net:
        argv = state.net.enter(node.name, argv)
    return processes.spawn(argv, run_dir / "watchdog.out")


def node_paths(state: LabState, node: LabNode) -> list[str]:
    """What of the lab dir ``node`` sees in its own mount namespace: the shared volume and
    every path its agent's config names there (its run dir, its certificate files, the
    directory of the CRL it keeps)."""
    lab = Path(state.dir).resolve()
    config = tomllib.loads(Path(node.config).read_text())
    named = [v for v in config.values() if isinstance(v, str) and v.startswith("/")]
    # The CRL the agent rewrites (a new file renamed over it): its directory, the node's own
    # (lab/joining.py), not the file, which a rename cannot replace under a bind mount.
    crl = config.get("etcd_crl")
    writes = [str(Path(crl).parent)] if isinstance(crl, str) else []
    paths = [state.shared_dir, node.run_dir, *writes, *named]
    inside = [p for p in paths if p and Path(p).resolve().is_relative_to(lab)]
    return [p for p in dict.fromkeys(inside) if Path(p).resolve() != lab and Path(p).exists()]


def _healthy(url: str, ca: str) -> bool:
    """``/healthz`` answers without a token (api/auth.py)."""
    try:
        verify = ssl.create_default_context(cafile=ca or None)
        response = httpx.get(f"{url}/api/v1/healthz", timeout=1.0, verify=verify)
        return response.status_code == 200
    except httpx.HTTPError:
        return False


def _wait(predicate: Callable[[], bool], timeout: float, message: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise LabError(message)


def vm_pids(node: LabNode) -> list[int]:
    """The VM processes (QEMU or sim placeholders) of a lab node that still run."""
    return running_pids(Path(node.run_dir))


def down(lab_dir: Path = DEFAULT_LAB_DIR, log: Log = print) -> None:
    """Stop everything the lab started, VMs included, and remove the lab dir."""
    try:
        state = load(lab_dir)
    except HvcError:
        state = None
    if state is not None:
        # SIGKILL, not SIGTERM, for agents and watchdogs too: what a graceful stop does (hand
        # leases back, close connections, a watchdog's last fence) goes with the lab anyway,
        # and waiting for it cost ~1 s a lab. Their process groups go with them, so a child
        # they ran in no session of its own (``qemu-img``) is not left behind. The VMs (QEMU
        # runs in a session of its own) are killed by their pid files, looked at once more
        # when no agent or watchdog is left that could have started or written one since.
        agents = [n.agent_pid for n in state.nodes]
        processes.kill(agents, groups=True)
        vms = [p for n in state.nodes for p in vm_pids(n)]
        processes.kill(vms)
        processes.kill([n.watchdog_pid for n in state.nodes], groups=True)
        processes.kill([p for n in state.nodes for p in vm_pids(n)])
        # SIGKILL, not SIGTERM: their data dirs go with the lab dir, and etcd members stopped
        # together each wait ~5 s for a leadership transfer no member is left to take.
        processes.kill(list(state.etcd_pids))
        log(f"stopped {len(agents)} agents, {len(vms)} VMs, {len(state.etcd_pids)} etcd member(s)")
        if state.net is not None:
            names = [n.name for n in state.nodes] or [f"n{i + 1}" for i in range(16)]
            etcd = [m.name for m in state.etcd_members] or [f"etcd{j}" for j in range(5)]
            netns.destroy(state.net, [*names, *etcd])
    shutil.rmtree(lab_dir, ignore_errors=True)
