"""``hvc cluster init``: make a cluster on its first host.

It makes the cluster CA and this host's certificate, starts a one-member etcd (TLS, client
certificates required) unless etcd endpoints are given, writes into etcd the cluster config,
the CA (so that any agent can sign a joining host's certificate: docs/architecture.md,
"Joining and evicting hosts") and the first admin token, and writes ``agent.toml``. Like
``hvc token create --store-endpoints`` it talks to etcd directly: there is no API yet.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import typer

from hvcluster.cli.output import console, err_console, friendly_errors
from hvcluster.cli.store_cmd import ca_option, cert_option, key_option, store_tls
from hvcluster.host import cluster_init, etcd_unit
from hvcluster.host.cluster_init import FirstHost
from hvcluster.host.pki import serial_of
from hvcluster.models.base import encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.errors import Conflict
from hvcluster.models.join import ClusterCa, IssuedCert
from hvcluster.models.names import check_name
from hvcluster.models.token import Role, issue
from hvcluster.store.base import Compare, Put
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.etcd_conn import EtcdTls
from hvcluster.store.keys import Keys


def records(host: FirstHost) -> tuple[list[Put], str]:
    """What init writes into etcd: config, CA, this host's certificate record and an admin
    token; with the admin token to show once."""
    keys = Keys(host.cluster)
    token, bearer = issue("admin", Role.ADMIN, time.time(), created_by="hvc cluster init")
    ca = ClusterCa(cert_pem=host.certs.ca.read_text(), key_pem=host.ca_key.read_text())
    serial = serial_of(host.certs.cert.read_text())
    issued = IssuedCert(node=host.node, serial=serial, issued_at=time.time())
    config = ClusterConfig().model_copy(update={"name": host.cluster})
    puts = [
        Put(keys.config, encode(config)),
        Put(keys.cluster_ca, encode(ca)),
        Put(keys.issued_cert(host.node), encode(issued)),
        Put(keys.token(token.name), encode(token)),
    ]
    return puts, bearer


async def bootstrap(
    endpoints: list[str], tls: EtcdTls | None, cluster: str, puts: list[Put]
) -> None:
    """``puts`` in one transaction, refused if the cluster's config exists already."""
    async with EtcdStore(endpoints, tls=tls) as store:
        done = await store.txn([Compare.absent(Keys(cluster).config)], list(puts))
    if not done.succeeded:
        raise Conflict(f"cluster {cluster!r} is set up in this etcd already: nothing written")


@friendly_errors
def init(
    address: str = typer.Option(..., "--address", help="This host's address in the cluster."),
    cluster: str = typer.Option("hvc", "--cluster", help="The cluster's name."),
    node: str = typer.Option("", "--node", help="This host's node name (default: its hostname)."),
    directory: Path = typer.Option(Path("/etc/hvcluster"), "--dir", help="Config and PKI."),
    etcd_endpoints: str = typer.Option(
        "", "--etcd-endpoints", help="Use this etcd (comma-separated) instead of starting one."
    ),
    etcd_client_url: str = typer.Option(
        "", "--etcd-client-url", help="Default https://ADDRESS:2379."
    ),
    etcd_peer_url: str = typer.Option("", "--etcd-peer-url", help="Default https://ADDRESS:2380."),
    etcd_data_dir: Path = typer.Option(Path("/var/lib/hvcluster/etcd"), "--etcd-data-dir"),
    api_port: int = typer.Option(8440, "--api-port", help="This host's agent API port."),
    ca: Path | None = ca_option(),
    cert: Path | None = cert_option(),
    key: Path | None = key_option(),
) -> None:
    """Make a new cluster on this host: CA, certificates, etcd, config, first admin token."""
    name = check_name(node or socket.gethostname().split(".")[0].lower())
    check_name(cluster)
    host_part = f"[{address}]" if ":" in address else address
    directory.mkdir(parents=True, exist_ok=True)
    certs, ca_key = cluster_init.make_pki(directory, cluster, name, address)
    host = FirstHost(
        node=name,
        cluster=cluster,
        address=address,
        directory=directory,
        certs=certs,
        ca_key=ca_key,
        etcd_client_url=etcd_client_url or f"https://{host_part}:2379",
        etcd_peer_url=etcd_peer_url or f"https://{host_part}:2380",
        etcd_data_dir=etcd_data_dir,
    )
    flags = cluster_init.etcd_flags(host)
    (directory / "etcd.flags").write_text("\n".join(flags) + "\n")
    if etcd_endpoints:
        endpoints = [e.strip() for e in etcd_endpoints.split(",") if e.strip()]
        tls = store_tls(ca, cert, key)
    elif etcd_unit.usable(directory / "etcd.flags"):
        etcd_unit.start()
        cluster_init.wait_healthy(host, f"journalctl -u {etcd_unit.ETCD_UNIT}")
        err_console.print(
            f"etcd started by systemd ({etcd_unit.ETCD_UNIT}, enabled), flags in "
            f"{directory / 'etcd.flags'}"
        )
    else:
        pid = cluster_init.start_etcd(host)
        err_console.print(f"etcd started (pid {pid}), flags in {directory / 'etcd.flags'}")
        endpoints = [host.etcd_client_url]
        tls = EtcdTls(host.certs.ca, host.certs.cert, host.certs.key)
    puts, bearer = records(host)
    asyncio.run(bootstrap(endpoints, tls, cluster, puts))
    agent_conf = directory / "agent.toml"
    if agent_conf.exists():
        err_console.print(f"{agent_conf} exists: left as it is (etcd endpoints {endpoints})")
    else:
        cluster_init.write_private(agent_conf, cluster_init.agent_toml(host, endpoints, api_port))
    err_console.print(
        f"cluster {cluster} made on {name}: CA in {directory / 'pki'}, agent config "
        f"{agent_conf}; the admin token, shown only now:"
    )
    console.print(bearer, soft_wrap=True)
