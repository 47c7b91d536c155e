"""Real etcd for tests: one started per session (or per test, for tests that restart it).

Data dirs go to /dev/shm when it exists (etcd fsyncs every write; tmpfs makes that cheap on a
shared test machine). Every process started here is stopped by its fixture, even on failure.
Import the fixtures into a conftest: ``from tests.etcd_fixtures import etcd_session``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hvcluster.lab.etcd import EtcdCluster

SHM = Path("/dev/shm")


def scratch_dir() -> Path:
    root = SHM if SHM.is_dir() else None
    return Path(tempfile.mkdtemp(prefix="hvc-test-etcd-", dir=root))


@contextmanager
def running_etcd(size: int = 1, **kwargs: int) -> Iterator[EtcdCluster]:
    """An etcd cluster of ``size`` members, started, and stopped and removed afterwards."""
    cluster = EtcdCluster(size, scratch_dir(), **kwargs)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.base_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def etcd_session() -> Iterator[EtcdCluster]:
    """One etcd member shared by every test of the session (tests use their own prefixes)."""
    with running_etcd(1) as cluster:
        yield cluster


@pytest.fixture
def etcd_private() -> Iterator[EtcdCluster]:
    """An etcd member of this test alone: for tests that stop, kill or restart it."""
    with running_etcd(1) as cluster:
        yield cluster
