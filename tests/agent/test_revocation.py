"""An agent whose certificate was revoked (its host evicted) refuses to start."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvcluster.agent.revocation import CertificateRevoked, refuse_if_revoked
from hvcluster.host.pki import Authority, serial_of
from hvcluster.models.base import encode
from hvcluster.models.join import RevokedCert
from hvcluster.store.keys import Keys
from hvcluster.store.memory_store import MemoryStore

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
