"""What ``hvc lab up`` started, saved so that later ``hvc lab`` commands (and ``hvc`` itself,
to find the API and the CA to verify it with) can find it: ``<lab dir>/lab.json``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import ValidationError

from hvcluster.lab.netns import LabNet
from hvcluster.models.base import Model, describe
from hvcluster.models.errors import HvcError

DEFAULT_LAB_DIR = Path(os.environ.get("HVC_LAB_DIR", "/run/hvc-lab"))
STATE_FILE = "lab.json"


class LabNode(Model):
    name: str
    run_dir: str
    config: str  # path of the agent's TOML config
    api_port: int
    address: str = "127.0.0.1"  # the agent's API and migration address
    migration_address: str = ""  # with a migration network: its address there
    agent_pid: int = 0
    watchdog_pid: int = 0


class LabEtcd(Model):
    """One etcd member of the lab: enough to start it again on its ports and data dir."""

    name: str
    address: str  # where it listens (its own namespace's address in a netns lab)
    client_url: str
    command: tuple[str, ...]  # its etcd command line (without any nsenter prefix)
    data_dir: str
    log: str
    pid: int = 0


class LabState(Model):
    cluster: str
    dir: str
    driver: Literal["qemu", "sim"]
    etcd_endpoints: tuple[str, ...]
    etcd_pids: tuple[int, ...] = ()
    etcd_data_dirs: tuple[str, ...] = ()
    etcd_members: tuple[LabEtcd, ...] = ()  # the same members, in full (etcd_pids kept in step)
    nodes: tuple[LabNode, ...] = ()
    api: tuple[str, ...] = ()  # every agent's API base URL
    shared_dir: str = ""  # the lab's one "shared volume"
    net: LabNet | None = None  # None: every node on loopback; else a namespace per node
    # True: each node's processes in a mount namespace of their own that sees only its own
    # paths of the lab dir (lab/hostns.py); False (not root): every node sees the whole dir.
    private_mounts: bool = False
    token: str = ""  # the admin API token made at bootstrap (hvc reads it from here)
    profile: str = "default"  # the timing profile of its cluster config (models/config.py)
    fence_after_s: float = 3.0  # of that config: what each node's watchdog is started with
    # TLS: the lab's CA (etcd and every API have certificates it signed; clients verify
    # against it), and a client certificate of the lab's own, for etcdctl and
    # 'hvc store check'. Empty: a plain-text lab.
    ca: str = ""
    client_cert: str = ""
    client_key: str = ""

    @property
    def api_scheme(self) -> str:
        return "https" if self.ca else "http"

    def api_url(self, node: LabNode) -> str:
        """The base URL of ``node``'s API."""
        return f"{self.api_scheme}://{node.address}:{node.api_port}"

    def node(self, name: str) -> LabNode:
        return _named(self.nodes, name, "node", "nodes")

    def auth(self) -> dict[str, str]:
        """The header that sends the lab's admin token with a request."""
        return {"Authorization": f"Bearer {self.token}"}

    def member(self, name: str) -> LabEtcd:
        return _named(self.etcd_members, name, "etcd member", "members")

    def with_member(self, member: LabEtcd) -> LabState:
        members = tuple(member if m.name == member.name else m for m in self.etcd_members)
        return self.model_copy(
            update={"etcd_members": members, "etcd_pids": tuple(m.pid for m in members)}
        )

    def with_node(self, node: LabNode) -> LabState:
        nodes = tuple(node if n.name == node.name else n for n in self.nodes)
        return self.model_copy(update={"nodes": nodes})


N = TypeVar("N", LabNode, LabEtcd)


def _named(items: Iterable[N], name: str, what: str, plural: str) -> N:
    """The item called ``name``; else an error listing those there are."""
    found = list(items)
    for item in found:
        if item.name == name:
            return item
    known = ", ".join(i.name for i in found)
    raise HvcError(f"no {what} {name!r} in this lab ({plural}: {known})")


def save(state: LabState) -> Path:
    path = Path(state.dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)  # it holds the admin token: its owner (root) only
    tmp.chmod(0o600)
    tmp.write_text(json.dumps(state.model_dump(mode="json"), indent=2))
    tmp.replace(path)
    return path


def load(lab_dir: Path = DEFAULT_LAB_DIR) -> LabState:
    path = lab_dir / STATE_FILE
    try:
        return LabState.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise HvcError(
            f"no lab running here ({path} not found): start one with 'hvc lab up'"
        ) from None
    except ValidationError as e:
        raise HvcError(f"{path} is corrupt: {describe(e)}") from e
