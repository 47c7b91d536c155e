"""An agent refuses to start with a revoked certificate: its host was evicted
(``hvc node evict``, api/eviction.py), and running on would register the node again.

This is the part of revocation the agents honour themselves; etcd and the https servers
need a CRL for theirs (docs/architecture.md, "Joining and evicting hosts").
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from hvcluster.host.pki import serial_of
from hvcluster.models.errors import HvcError
from hvcluster.models.join import RevokedCert
from hvcluster.store.base import Store
from hvcluster.store.keys import Keys
from hvcluster.store.reads import Stored, read_one_or_error


class CertificateRevoked(HvcError):
    """This host's certificate is revoked: it was evicted from the cluster."""


async def refuse_if_revoked(store: Store, keys: Keys, cert: Path | None) -> None:
    """Raise :class:`CertificateRevoked` if ``cert`` (the agent's etcd certificate; None:
    plain etcd, nothing to check) is revoked in the cluster."""
    if cert is None:
        return
    serial = await asyncio.to_thread(lambda: serial_of(cert.read_text()))
    found = await read_one_or_error(store, keys.revoked_cert(serial), RevokedCert)
    if isinstance(found, Stored):
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(found.value.revoked_at))
        raise CertificateRevoked(
            f"this host's certificate {serial} ({cert}) was revoked at {when} "
            f"({found.value.reason or 'evicted'}): node {found.value.node} left the cluster; "
            "join it again with a new join token ('hvc node join')"
        )
