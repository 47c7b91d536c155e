from __future__ import annotations

from tests.etcd_fixtures import etcd_private, etcd_session, etcd_tls_session

__all__ = ["etcd_private", "etcd_session", "etcd_tls_session"]
