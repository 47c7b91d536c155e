"""``hvc cluster init`` on a first host: CA and certificate made, a one-member etcd with TLS
started, config, CA and admin token written into it, agent.toml an agent can load; a second
init on the same etcd writes nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hvcluster.agent.config import load_config
from hvcluster.cli.main import app
from hvcluster.lab import processes
from hvcluster.lab.etcd import free_ports
from hvcluster.models.join import ClusterCa
from hvcluster.models.token import Token, split_bearer
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.etcd_conn import EtcdTls
from hvcluster.store.keys import Keys

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(120)]


async def read(endpoint: str, tls: EtcdTls, keys: Keys) -> dict[str, bytes | None]:
    async with EtcdStore([endpoint], tls=tls) as store:
        got = {k: await store.get(k) for k in (keys.config, keys.cluster_ca, keys.token("admin"))}
    return {k: v.value if v else None for k, v in got.items()}


def test_init_makes_a_cluster_on_its_first_host(tmp_path: Path) -> None:
    client, peer = free_ports(2)
    url = f"https://127.0.0.1:{client}"
    conf = tmp_path / "etc"
    args = [
        "cluster", "init", "--address", "127.0.0.1", "--node", "h1", "--cluster", "c1",
        "--dir", str(conf), "--etcd-client-url", url,
        "--etcd-peer-url", f"https://127.0.0.1:{peer}", "--etcd-data-dir", str(tmp_path / "etcd"),
    ]  # fmt: skip
    try:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        bearer = result.stdout.strip().splitlines()[-1]
        pki = conf / "pki"
        assert stat.S_IMODE((pki / "ca.key").stat().st_mode) == 0o600
        tls = EtcdTls(pki / "ca.crt", pki / "h1.crt", pki / "h1.key")
        stored = asyncio.run(read(url, tls, Keys("c1")))
        assert all(v is not None for v in stored.values())
        ca = ClusterCa.model_validate_json(stored[Keys("c1").cluster_ca] or b"")
        assert ca.cert_pem == (pki / "ca.crt").read_text()
        parts = split_bearer(bearer)
        assert parts is not None and parts[0] == "admin"
        token = Token.model_validate_json(stored[Keys("c1").token("admin")] or b"")
        assert token.matches(parts[1])
        agent = load_config(conf / "agent.toml", {})
        assert (agent.node, agent.cluster, agent.etcd_cert) == ("h1", "c1", pki / "h1.crt")
        assert agent.etcd_crl == pki / "crl.pem" and "BEGIN X509 CRL" in agent.etcd_crl.read_text()
        again = [
            "cluster", "init", "--address", "127.0.0.1", "--node", "h1", "--cluster", "c1",
            "--dir", str(conf), "--etcd-endpoints", url, "--ca", str(pki / "ca.crt"),
            "--cert", str(pki / "h1.crt"), "--key", str(pki / "h1.key"),
        ]  # fmt: skip
        cert = (pki / "h1.crt").read_text()
        second = CliRunner().invoke(app, again)
        assert second.exit_code != 0 and "set up in this etcd already" in second.output
        assert (pki / "h1.crt").read_text() == cert  # kept, not made again
    finally:
        pid_file = conf / "etcd.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            processes.terminate([pid])
            if processes.alive(pid):
                os.kill(pid, signal.SIGKILL)
