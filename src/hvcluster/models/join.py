"""Joining hosts and evicting them: the cluster's CA, join tokens, issued and revoked
certificates (docs/architecture.md, "Joining and evicting hosts").

* ``pki/ca``: the cluster CA (certificate and key, PEM). It lives in etcd, so any agent can
  sign a joining host's request: every agent already holds an etcd client certificate that
  may read and write every key, so the key in etcd gives no agent more than it has.
* ``join/<node>``: a join token for the host that will be ``<node>``, its secret only hashed
  (as API tokens), good once for one certificate, until it expires.
* ``pki/issued/<node>``: the serial of the certificate issued to ``<node>``.
* ``pki/revoked/<serial>``: a revoked certificate (an evicted node's); an agent refuses to
  start with it.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from pydantic import Field

from hvcluster.models.base import Model
from hvcluster.models.names import Name, check_name
from hvcluster.models.token import hash_secret, new_secret

JOIN_TTL_S = 3600.0  # a join token's default lifetime
TOKEN_PREFIX = "hvcjoin"


class ClusterCa(Model):
    cert_pem: str
    key_pem: str

    @property
    def fingerprint(self) -> str:
        return ca_fingerprint(self.cert_pem)


def ca_fingerprint(cert_pem: str) -> str:
    """What a join token carries so the joining host can trust the CA it is sent: the
    SHA-256 of the CA certificate's PEM text (whitespace at its ends ignored)."""
    return hashlib.sha256(cert_pem.strip().encode()).hexdigest()


class JoinToken(Model):
    node: Name
    secret_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: float
    expires_at: float
    created_by: str = ""
    etcd_member: bool = False  # the host also runs an etcd member (a learner, then promoted)
    serial: str = ""  # set once its certificate is issued: the token then only promotes

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(self.secret_sha256, hash_secret(secret))

    def expired(self, now: float) -> bool:
        return now >= self.expires_at


class IssuedCert(Model):
    node: Name
    serial: str
    issued_at: float
    etcd_member_id: int = 0  # the etcd member added for it (0: none)


class RevokedCert(Model):
    serial: str
    node: Name
    revoked_at: float
    reason: str = ""


def issue_join(
    node: str,
    ca_cert_pem: str,
    now: float | None = None,
    ttl_s: float = JOIN_TTL_S,
    etcd_member: bool = False,
    created_by: str = "",
) -> tuple[JoinToken, str]:
    """A join token record and the string handed to the joining host, once:
    ``hvcjoin.<node>.<secret>.<CA fingerprint>``."""
    check_name(node)
    now = time.time() if now is None else now
    secret = new_secret().replace(".", "_")
    record = JoinToken(
        node=node,
        secret_sha256=hash_secret(secret),
        created_at=now,
        expires_at=now + ttl_s,
        created_by=created_by,
        etcd_member=etcd_member,
    )
    return record, f"{TOKEN_PREFIX}.{node}.{secret}.{ca_fingerprint(ca_cert_pem)}"


def split_join(token: str) -> tuple[str, str, str]:
    """``(node, secret, CA fingerprint)`` of a join token; ValueError saying why not."""
    parts = token.strip().split(".")
    if len(parts) != 4 or parts[0] != TOKEN_PREFIX:
        raise ValueError("a join token reads hvcjoin.NODE.SECRET.FINGERPRINT")
    _, node, secret, fingerprint = parts
    check_name(node)
    if not secret or len(fingerprint) != 64:
        raise ValueError("a join token reads hvcjoin.NODE.SECRET.FINGERPRINT")
    return node, secret, fingerprint


MAX_MEMBERS = 5  # etcd members (voters and learners) a cluster takes by default


def wanted_voters(hosts: int) -> int:
    """How many voting etcd members a cluster of ``hosts`` hosts should have: 5 from 5
    hosts, 3 from 3, else 1 (an even number adds a vote needed without adding a failure
    survived: 2 voters survive no failure, 4 survive one, as 3 do)."""
    return 5 if hosts >= 5 else 3 if hosts >= 3 else 1


def should_be_member(members: int) -> bool:
    """Whether a joining host runs an etcd member by default, given the ``members`` (voters
    and learners) there are: while they are fewer than :data:`MAX_MEMBERS`. The 2nd and 4th
    hosts join as learners that stay learners until the 3rd and 5th join (then both are
    promoted): a 3-host cluster ends with 3 voters, not 2."""
    return members < MAX_MEMBERS
