"""What ``hvc host install`` puts on a host: paths, the agent's config, the etcd member's.

The agent's config is rendered as TOML and validated by loading it exactly as ``hvc agent``
will (:func:`hvcluster.agent.config.load_config`), so a bad option fails the install, naming
its field, instead of the agent's first start.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hvcluster.agent.config import AgentConfig, load_config
from hvcluster.host.pki import etcd_tls_flags
from hvcluster.models.errors import ConfigError

PREFIX = Path("/opt/hvcluster")
ETC = Path("/etc/hvcluster")
UNIT_DIR = Path("/etc/systemd/system")
MODULES_DIR = Path("/etc/modules-load.d")
ETCD_DATA_DIR = Path("/var/lib/hvcluster/etcd")
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380

# What a host runs: systemd (there already, but not in a bare chroot), QEMU and its disk
# tool, ip/bridges, the kernel module loader (softdog), the etcd client (hvc store check).
# Not the guest image builder's tools, not dev tools.
HOST_PACKAGES = (
    "systemd",
    "python3-venv",
    "qemu-system-x86",
    "qemu-utils",
    "iproute2",
    "procps",
    "kmod",
    "util-linux",
    "openssl",
    "ca-certificates",
    "etcd-client",
)
ETCD_MEMBER_PACKAGES = ("etcd-server",)


@dataclass(frozen=True)
class HostPlan:
    """Everything the install writes, from the command's options. ``agent`` holds the
    agent's settings as ``AgentConfig`` fields (only those given: defaults stay implicit)."""

    agent: dict[str, Any]
    prefix: Path = PREFIX
    etc: Path = ETC
    unit_dir: Path = UNIT_DIR
    modules_dir: Path = MODULES_DIR  # softdog loaded at boot, before the watchdog opens it
    fence_after_s: float = 3.0
    hardware_watchdog: str | None = None  # e.g. /dev/watchdog
    softdog: bool = False
    etcd_member: bool = False
    etcd_initial_cluster: str | None = None  # NAME=https://HOST:2380,...; None: this one only
    etcd_existing: bool = False  # join a running etcd cluster instead of founding one
    extra_packages: tuple[str, ...] = field(default=())

    @property
    def config_path(self) -> Path:
        return self.etc / "agent.toml"

    @property
    def etcd_flags_path(self) -> Path:
        return self.etc / "etcd.flags"

    @property
    def softdog_conf(self) -> Path:
        return self.modules_dir / "hvc-softdog.conf"

    @property
    def run_dir(self) -> Path:
        return Path(self.agent.get("run_dir", AgentConfig.model_fields["run_dir"].default))

    def packages(self) -> tuple[str, ...]:
        member = ETCD_MEMBER_PACKAGES if self.etcd_member else ()
        return (*HOST_PACKAGES, *member, *self.extra_packages)


def _toml_value(value: Any) -> str:
    """TOML for the few value kinds the agent's config holds (JSON's string escapes are
    TOML's basic-string escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def agent_toml(plan: HostPlan) -> str:
    """The agent's config file, validated as ``hvc agent --config`` reads it."""
    lines = ["# Written by hvc host install: what hvc agent reads (AgentConfig)."]
    lines += [f"{key} = {_toml_value(value)}" for key, value in plan.agent.items()]
    text = "\n".join(lines) + "\n"
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(text)
        f.flush()
        load_config(Path(f.name), {})  # raises ConfigError naming the field
    return text


def etcd_flags(plan: HostPlan) -> str:
    """The etcd member's flags, one a line, as ``hvc cluster init`` and ``hvc node join``
    write them (``etcd.flags``; hvc-etcd.service runs etcd with them): it listens on the
    agent's address, TLS when the agent talks TLS to etcd (the same CA, and the node's
    certificate ``etcd_cert``, named for its address, on its client and peer links)."""
    name = plan.agent["node"]
    address = plan.agent.get("address", "127.0.0.1")
    ca = plan.agent.get("etcd_ca")
    scheme = "https" if ca else "http"
    peer = f"{scheme}://{address}:{ETCD_PEER_PORT}"
    client = f"{scheme}://{address}:{ETCD_CLIENT_PORT}"
    local = f"{scheme}://127.0.0.1:{ETCD_CLIENT_PORT}"
    flags = [
        f"--name={name}",
        f"--data-dir={ETCD_DATA_DIR}",
        f"--listen-client-urls={client if address == '127.0.0.1' else f'{client},{local}'}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={plan.etcd_initial_cluster or f'{name}={peer}'}",
        f"--initial-cluster-token=hvc-{plan.agent.get('cluster', 'hvc')}",
        f"--initial-cluster-state={'existing' if plan.etcd_existing else 'new'}",
    ]
    if ca:
        cert, key = plan.agent.get("etcd_cert"), plan.agent.get("etcd_key")
        if cert is None or key is None:
            raise ConfigError(
                "an etcd member with TLS needs this node's certificate: give --etcd-cert "
                "and --etcd-key (its address in the names, for server and client use)",
                field="etcd_cert",
            )
        flags += etcd_tls_flags(ca, cert, key)
    return "\n".join(flags) + "\n"
