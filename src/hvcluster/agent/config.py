"""The agent's own settings (one host), from a TOML file and/or command-line flags.

Cluster-wide settings (timings, migration limits) live in etcd (``config``); these are only
what a host must know before it can reach etcd.

TLS: ``etcd_ca`` (the CA that signed etcd's certificates) with ``etcd_cert``/``etcd_key``
(this agent's client certificate, for etcd's ``--client-cert-auth``) makes every etcd
connection TLS. ``api_cert``/``api_key`` make the API https; every agent of a cluster then
serves https, and this one checks the others' certificates against ``api_ca`` (default: the
system's CAs). Files are checked at load, each error naming its setting.
"""

from __future__ import annotations

import ssl
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator

from hvcluster.models.base import Model, describe
from hvcluster.models.errors import ConfigError
from hvcluster.models.guestcpu import QEMU_DEFAULT
from hvcluster.models.names import Labels, Name, check_host_or_empty


class AgentConfig(Model):
    node: Name
    cluster: Name = "hvc"
    etcd: tuple[str, ...] = Field(default=("127.0.0.1:2379",), min_length=1)
    address: str = "127.0.0.1"  # how other nodes reach this one (API, migrations)
    # Where QEMU's migration streams (and a shared-nothing move's disks) reach this host, if
    # not at ``address``: an address on a separate migration network. "": ``address``.
    migration_address: str = Field(default="", max_length=253)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8440, gt=0, lt=65536)
    run_dir: Path = Path("/run/hvc")
    driver: Literal["qemu", "sim"] = "qemu"
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    cache_dir: Path = Path("/var/cache/hvcluster")
    # The named CPU model qemu gives guests (-cpu): the same on every node keeps live
    # migration possible between different hosts.
    guest_cpu: str = Field(default=QEMU_DEFAULT, min_length=1)
    cpus: int | None = Field(default=None, gt=0)  # override what the driver reports
    memory_mib: int | None = Field(default=None, gt=0)
    labels: Labels = {}  # bounded as a node's labels are, so registration cannot fail
    controller: bool = True  # stand for election as controller
    sim_seed: int = 0
    etcd_ca: Path | None = None
    etcd_cert: Path | None = None
    etcd_key: Path | None = None
    api_cert: Path | None = None
    api_key: Path | None = None
    api_ca: Path | None = None
    # Where this host's etcd member reads its CRL (--client-crl-file, --peer-crl-file): the
    # agent rewrites it whenever a certificate is revoked (agent/revocation.py). None: no
    # etcd member here, or revocations not enforced by etcd.
    etcd_crl: Path | None = None

    @field_validator("migration_address")
    @classmethod
    def _migration_host(cls, value: str) -> str:
        return check_host_or_empty(value)

    @field_validator("etcd_ca", "etcd_cert", "etcd_key", "api_cert", "api_key", "api_ca")
    @classmethod
    def _readable_pem(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        try:
            head = path.read_bytes()[:65536]
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e.strerror}") from None
        if b"-----BEGIN " not in head:
            raise ValueError(f"{path} is not a PEM file")
        return path

    @field_validator("etcd_ca")
    @classmethod
    def _ca_matches_endpoints(cls, ca: Path | None, info: ValidationInfo) -> Path | None:
        schemes = {e.split("://")[0] for e in info.data.get("etcd", ()) if "://" in e}
        if ca is None and "https" in schemes:
            raise ValueError("https:// etcd endpoints need etcd_ca (the CA of etcd's certificates)")
        if ca is not None and "http" in schemes:
            raise ValueError("set, but an etcd endpoint is http:// (plain text): use https://")
        return ca

    @field_validator("etcd_cert")
    @classmethod
    def _cert_needs_ca(cls, cert: Path | None, info: ValidationInfo) -> Path | None:
        if cert is not None and "etcd_ca" in info.data and info.data["etcd_ca"] is None:
            raise ValueError("a client certificate for etcd needs etcd_ca too")
        return cert

    @field_validator("etcd_key", "api_key")
    @classmethod
    def _key_with_cert(cls, key: Path | None, info: ValidationInfo) -> Path | None:
        cert = info.field_name.replace("_key", "_cert") if info.field_name else ""
        if cert not in info.data:  # the certificate itself was refused
            return key
        if (info.data[cert] is None) != (key is None):
            raise ValueError(f"{cert} and its key go together: give both or neither")
        if key is not None:
            try:  # a key of another certificate would only fail at the first connection
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(info.data[cert], key)
            except ssl.SSLError as e:
                raise ValueError(f"{key} is not the key of {cert} {info.data[cert]}: {e}") from None
        return key


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
