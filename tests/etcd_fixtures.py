"""Real etcd for tests: one started per session (or per test, for tests that restart it).

Data dirs go to /dev/shm when it exists (etcd fsyncs every write; tmpfs makes that cheap on a
shared test machine). Every process started here is stopped by its fixture, even on failure.
Import the fixtures into a conftest: ``from tests.etcd_fixtures import etcd_session``.

``etcd_tls_session`` runs etcd as the lab does: TLS on client and peer links, and a client
certificate required (``--client-cert-auth``), all from one test CA (:func:`store_tls` gives
a client's settings).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hvcluster.host.pki import Authority
from hvcluster.lab.etcd import EtcdCluster
from hvcluster.store.etcd_conn import EtcdTls

SHM = Path("/dev/shm")


def scratch_dir() -> Path:
    root = SHM if SHM.is_dir() else None
    return Path(tempfile.mkdtemp(prefix="hvc-test-etcd-", dir=root))


@contextmanager
def running_etcd(size: int = 1, tls: bool = False, **kwargs: int) -> Iterator[EtcdCluster]:
    """An etcd cluster of ``size`` members (with TLS and client-certificate auth if
    ``tls``), started, and stopped and removed afterwards."""
    base = scratch_dir()
    try:
        authority = Authority(base / "pki") if tls else None
        cluster = EtcdCluster(size, base, authority=authority, **kwargs)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def store_tls(cluster: EtcdCluster) -> EtcdTls | None:
    """What a client of ``cluster`` needs for TLS (None for a plain one)."""
    files = cluster.client_tls
    return None if files is None else EtcdTls(files.ca, files.cert, files.key)


@pytest.fixture(scope="session")
def etcd_session() -> Iterator[EtcdCluster]:
    """One etcd member shared by every test of the session (tests use their own prefixes)."""
    with running_etcd(1) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def etcd_tls_session() -> Iterator[EtcdCluster]:
    """One etcd member with TLS and client-certificate auth, shared like ``etcd_session``."""
    with running_etcd(1, tls=True) as cluster:
        yield cluster


@pytest.fixture
def etcd_private() -> Iterator[EtcdCluster]:
    """An etcd member of this test alone: for tests that stop, kill or restart it."""
    with running_etcd(1) as cluster:
        yield cluster
