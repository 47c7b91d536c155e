"""The agent's own settings (one host), from a TOML file and/or command-line flags.

Cluster-wide settings (timings, migration limits) live in etcd (``config``); these are only
what a host must know before it can reach etcd.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from hvcluster.models.base import Model, describe
from hvcluster.models.errors import ConfigError
from hvcluster.models.names import Labels, Name


class AgentConfig(Model):
    node: Name
    cluster: Name = "hvc"
    etcd: tuple[str, ...] = Field(default=("127.0.0.1:2379",), min_length=1)
    address: str = "127.0.0.1"  # how other nodes reach this one (API, migrations)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8440, gt=0, lt=65536)
    run_dir: Path = Path("/run/hvc")
    driver: Literal["qemu", "sim"] = "qemu"
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    cache_dir: Path = Path("/var/cache/hvcluster")
    # The named CPU model qemu gives guests (-cpu): the same on every node keeps live
    # migration possible between different hosts.
    guest_cpu: str = Field(default="qemu64", min_length=1)
    cpus: int | None = Field(default=None, gt=0)  # override what the driver reports
    memory_mib: int | None = Field(default=None, gt=0)
    labels: Labels = {}  # bounded as a node's labels are, so registration cannot fail
    controller: bool = True  # stand for election as controller
    sim_seed: int = 0


def load_config(path: Path | None, overrides: dict[str, Any]) -> AgentConfig:
    """Read ``path`` (TOML) if given, apply the non-None ``overrides``, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}", field="config") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}", field="config") from e
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe(e)) from e
