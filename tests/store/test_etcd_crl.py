"""etcd honours a certificate revocation list given as ``--client-crl-file``, read again at
every new connection: a CRL rewritten on disk shuts a revoked client out without a restart
(what revoking an evicted host's certificate needs from etcd)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hvcluster.host.pki import Authority, make_crl, serial_of
from hvcluster.lab.etcd import HOST, EtcdProcess, free_ports
from hvcluster.models.errors import StoreError
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.etcd_conn import EtcdTls
from tests.etcd_fixtures import scratch_dir

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(90)]


def asks(endpoint: str, tls: EtcdTls) -> bool:
    """A new client (a new connection) gets an answer."""
    return asyncio.run(answers(endpoint, tls))


async def answers(endpoint: str, tls: EtcdTls) -> bool:
    try:
        async with EtcdStore([endpoint], timeout=2.0, tls=tls) as store:
            await store.get("/crl-test")
            return True
    except StoreError:
        return False


def test_a_rewritten_crl_shuts_out_a_revoked_client_without_a_restart() -> None:
    base = scratch_dir()
    proc: subprocess.Popen[bytes] | None = None
    try:
        pki = Authority(base / "pki")
        ca_cert, ca_key = pki.ensure_ca().read_text(), pki.ca_key.read_text()
        crl = base / "crl.pem"
        crl.write_text(make_crl(ca_cert, ca_key, []))
        client, peer = free_ports(2)
        member = EtcdProcess(
            "etcd0", base / "etcd0", client, peer, f"etcd0=https://{HOST}:{peer}", "crl",
            tls=pki.issue("etcd0", [HOST]),
        )  # fmt: skip
        member.data_dir.mkdir(parents=True)
        with open(base / "etcd0.log", "wb") as log:
            proc = subprocess.Popen(
                [*member.command(), f"--client-crl-file={crl}"], stdout=log, stderr=log
            )
        good, gone = pki.issue("good"), pki.issue("gone")
        good_tls = EtcdTls(good.ca, good.cert, good.key)
        gone_tls = EtcdTls(gone.ca, gone.cert, gone.key)
        for _ in range(100):
            if asks(member.endpoint, good_tls):
                break
            time.sleep(0.2)
        assert asks(member.endpoint, gone_tls)
        serial = serial_of(Path(gone.cert).read_text())
        crl.write_text(make_crl(ca_cert, ca_key, [(serial, "gone")]))
        assert not asks(member.endpoint, gone_tls)
        assert asks(member.endpoint, good_tls)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)
