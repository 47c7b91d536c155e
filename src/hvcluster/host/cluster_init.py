"""The first host's files for ``hvc cluster init``: the cluster CA, the host's certificate,
its one-member etcd's flags (and, unless etcd endpoints are given, that etcd started), and
``agent.toml``. What goes into etcd (config, CA, admin token) is written by the command
(cli/init_cmd.py), once etcd answers.

Every file is under one directory (``/etc/hvcluster`` on a host): ``pki/`` (``ca.crt``,
``ca.key``, ``<node>.crt``, ``<node>.key``: keys 0600), ``etcd.flags`` (one flag a line,
as ``hvc node join`` writes them for a joining member) and ``agent.toml``.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hvcluster.host.pki import Authority, CertFiles, etcd_tls_flags, make_crl
from hvcluster.models.errors import HvcError


class InitError(HvcError):
    """The first host could not be set up (the message says which step and why)."""


@dataclass(frozen=True)
class FirstHost:
    node: str
    cluster: str
    address: str
    directory: Path
    certs: CertFiles
    ca_key: Path
    etcd_client_url: str
    etcd_peer_url: str
    etcd_data_dir: Path


def make_pki(directory: Path, cluster: str, node: str, address: str) -> tuple[CertFiles, Path]:
    """The cluster CA (made once) and this host's certificate (its etcd member, its agent's
    etcd client and its API all use it); with the CA key's path. Files there already (an
    init run again after a failure) are kept. A first, empty CRL goes to ``pki/crl.pem``
    (:func:`crl_path`), which the agent keeps up to date."""
    pki = Authority(directory / "pki", f"hvcluster {cluster} CA")
    pki.ensure_ca()
    if not crl_path(directory).exists():
        crl_path(directory).write_text(
            make_crl(pki.ca_cert.read_text(), pki.ca_key.read_text(), [])
        )
    cert, key = pki.dir / f"{node}.crt", pki.dir / f"{node}.key"
    if pki.ca_cert.exists() and pki.ca_key.exists() and cert.exists() and key.exists():
        return CertFiles(pki.ca_cert, cert, key), pki.ca_key
    return pki.issue(node, [address, node, "127.0.0.1", "localhost"]), pki.ca_key


def crl_path(directory: Path) -> Path:
    return directory / "pki" / "crl.pem"


def etcd_flags(host: FirstHost) -> list[str]:
    """A new one-member etcd cluster with TLS and client certificates required."""
    ca, cert, key = host.certs.ca, host.certs.cert, host.certs.key
    return [
        f"--name={host.node}",
        f"--data-dir={host.etcd_data_dir}",
        f"--listen-client-urls={host.etcd_client_url}",
        f"--advertise-client-urls={host.etcd_client_url}",
        f"--listen-peer-urls={host.etcd_peer_url}",
        f"--initial-advertise-peer-urls={host.etcd_peer_url}",
        f"--initial-cluster={host.node}={host.etcd_peer_url}",
        f"--initial-cluster-token=hvc-{host.cluster}",
        "--initial-cluster-state=new",
        *etcd_tls_flags(ca, cert, key),
        f"--client-crl-file={crl_path(host.directory)}",
        f"--peer-crl-file={crl_path(host.directory)}",
    ]


def start_etcd(host: FirstHost, binary: str = "etcd", timeout: float = 30.0) -> int:
    """Start the one-member etcd detached (its log next to its data dir); its pid, once it
    answers ``/health``. Where ``hvc-etcd.service`` runs etcd from these flags, the
    command starts that unit instead (host/etcd_unit.py)."""
    host.etcd_data_dir.mkdir(parents=True, exist_ok=True)
    log = host.etcd_data_dir.parent / f"{host.etcd_data_dir.name}.log"
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(
                [binary, *etcd_flags(host)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise InitError(f"etcd: the {binary} command is not installed") from None
    (host.directory / "etcd.pid").write_text(f"{proc.pid}\n")

    def exited() -> None:
        if proc.poll() is not None:
            raise InitError(f"etcd exited ({proc.returncode}) at once; see {log}")

    wait_healthy(host, f"see {log}", timeout, exited)
    return proc.pid


def wait_healthy(
    host: FirstHost,
    see: str,
    timeout: float = 30.0,
    check: Callable[[], None] = lambda: None,
) -> None:
    """Until the member answers ``/health`` (``check`` raises if it cannot any more)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        check()
        if healthy(host):
            return
        time.sleep(0.2)
    raise InitError(f"etcd did not answer within {timeout:.0f}s; {see}")


def healthy(host: FirstHost) -> bool:
    context = ssl.create_default_context(cafile=str(host.certs.ca))
    context.load_cert_chain(host.certs.cert, host.certs.key)
    try:
        with urllib.request.urlopen(
            f"{host.etcd_client_url}/health", timeout=1.0, context=context
        ) as r:
            return b'"true"' in r.read()
    except (OSError, urllib.error.URLError):
        return False


def agent_toml(host: FirstHost, endpoints: list[str], api_port: int) -> str:
    """The agent's config for this host (hvc agent --config)."""
    c = host.certs
    etcd = ", ".join(f'"{e}"' for e in endpoints)
    return (
        f'node = "{host.node}"\ncluster = "{host.cluster}"\netcd = [{etcd}]\n'
        f'address = "{host.address}"\napi_host = "{host.address}"\napi_port = {api_port}\n'
        f'etcd_ca = "{c.ca}"\netcd_cert = "{c.cert}"\netcd_key = "{c.key}"\n'
        f'api_cert = "{c.cert}"\napi_key = "{c.key}"\napi_ca = "{c.ca}"\n'
        f'etcd_crl = "{crl_path(host.directory)}"\n'
    )


def write_private(path: Path, text: str) -> None:
    path.write_text(text)
    os.chmod(path, 0o644)
