"""An agent whose certificate was revoked (its host evicted) refuses to start."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path

import pytest

from hvcluster.agent.revocation import CertificateRevoked, keep_crl, refuse_if_revoked
from hvcluster.host.pki import Authority, serial_of
from hvcluster.models.base import encode
from hvcluster.models.join import ClusterCa, RevokedCert
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore
from tests.waiting import wait_for

KEYS = Keys("t")


async def test_a_revoked_certificate_is_refused_and_others_pass(
    store: MemoryStore, tmp_path: Path
) -> None:
    pki = Authority(tmp_path)
    mine, other = pki.issue("n4"), pki.issue("n5")
    serial = serial_of(mine.cert.read_text())
    revoked = RevokedCert(serial=serial, node="n4", revoked_at=0.0, reason="evicted by ann")
    await store.put(KEYS.revoked_cert(serial), encode(revoked))
    with pytest.raises(CertificateRevoked, match=f"certificate {serial} .*evicted by ann"):
        await refuse_if_revoked(store, KEYS, mine.cert)
    await refuse_if_revoked(store, KEYS, other.cert)
    await refuse_if_revoked(store, KEYS, None)


async def test_the_crl_file_follows_the_revocations_in_etcd(
    store: MemoryStore, tmp_path: Path
) -> None:
    pki = Authority(tmp_path / "pki")
    pki.ensure_ca()
    ca = ClusterCa(cert_pem=pki.ca_cert.read_text(), key_pem=pki.ca_key.read_text())
    await store.put(KEYS.cluster_ca, encode(ca))
    crl = tmp_path / "crl.pem"
    keeper = asyncio.create_task(keep_crl(store, KEYS, crl, retry_s=0.1))
    try:
        await wait_for(crl.exists, 10, "the first CRL")
        assert serials(crl) == set()
        for serial, node in (("4A01", "n4"), ("4B02", "n5")):
            revoked = RevokedCert(serial=serial, node=node, revoked_at=0.0)
            await store.put(KEYS.revoked_cert(serial), encode(revoked))
        await wait_for(lambda: serials(crl) == {"4A01", "4B02"}, 10, "both serials in the CRL")
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper


def serials(crl: Path) -> set[str]:
    text = subprocess.run(
        ["openssl", "crl", "-in", str(crl), "-noout", "-text"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    return {line.split(":", 1)[1].strip() for line in text.splitlines() if "Serial Number:" in line}
