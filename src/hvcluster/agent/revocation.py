"""An agent refuses to start with a revoked certificate: its host was evicted
(``hvc node evict``, api/eviction.py), and running on would register the node again.

An agent given ``etcd_crl`` also keeps that file (its host's etcd reads it as
``--client-crl-file``/``--peer-crl-file``) in step with the revocations in etcd
(:func:`keep_crl`; docs/architecture.md, "Joining and evicting hosts").
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from hvcluster.host.pki import PkiError, make_crl, serial_of
from hvcluster.models.errors import HvcError, StoreError
from hvcluster.models.join import ClusterCa, RevokedCert
from hvcluster.store.base import Store
from hvcluster.store.keys import Keys
from hvcluster.store.reads import Stored, read_one_or_error

log = logging.getLogger(__name__)


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


async def write_crl(store: Store, keys: Keys, path: Path) -> int:
    """Write the cluster's CRL (every ``pki/revoked/`` serial, signed by the cluster CA) to
    ``path``, atomically; the store revision it reflects. No CA in etcd: nothing written."""
    pki = keys.prefix("pki")
    read = await store.range(pki)
    ca: ClusterCa | None = None
    revoked: list[tuple[str, str]] = []
    for kv in read.kvs:
        try:
            if kv.key == keys.cluster_ca:
                ca = ClusterCa.model_validate_json(kv.value)
            elif kv.key.startswith(pki + "revoked/"):
                r = RevokedCert.model_validate_json(kv.value)
                revoked.append((r.serial, r.node))
        except ValueError as e:
            log.warning("CRL: %s does not decode (%s); left out", kv.key, e)
    if ca is None:
        log.warning("CRL: no cluster CA in etcd; %s not written", path)
        return read.revision
    pem = await asyncio.to_thread(make_crl, ca.cert_pem, ca.key_pem, revoked)
    await asyncio.to_thread(_replace, path, pem)
    return read.revision


def _replace(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".new")
    temp.write_text(text)
    os.chmod(temp, 0o644)
    os.replace(temp, path)


async def keep_crl(store: Store, keys: Keys, path: Path, retry_s: float = 5.0) -> None:
    """Keep ``path`` (this host's etcd ``--client-crl-file``/``--peer-crl-file``) in step
    with the revocations in etcd: written now, and again at every change under
    ``pki/revoked/`` (etcd reads the file at every new connection: no restart needed)."""
    while True:
        try:
            revision = await write_crl(store, keys, path)
            async for _ in store.watch(keys.prefix("pki") + "revoked/", revision + 1):
                await write_crl(store, keys, path)
        except (StoreError, PkiError, OSError) as e:
            log.warning("CRL %s not kept up to date (%s); trying again in %gs", path, e, retry_s)
            await asyncio.sleep(retry_s)
