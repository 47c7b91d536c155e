"""API tokens (``tokens/<name>``): who may call the API, with which role.

A token is a random secret shown once, when it is made. The store keeps only its SHA-256
(the secret has 256 bits of entropy, so a plain hash is as good as a slow one and costs
nothing per request), the name, the role and the dates. A client presents
``<name>.<secret>`` as a bearer token: the name finds the record, the secret is checked
against its hash in constant time. Revoking a token deletes its record.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from enum import StrEnum

from pydantic import Field

from hvcluster.models.base import Model
from hvcluster.models.names import Name, check_name

SECRET_BYTES = 32


class Role(StrEnum):
    """What a token may do; each role may do everything the ones before it may."""

    READER = "reader"  # read anything
    OPERATOR = "operator"  # + act: VMs, nodes, migrations, storage moves
    ADMIN = "admin"  # + cluster config, tokens, volumes, switches

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank

    def below(self) -> Role | None:
        """The role just under this one (None for the lowest)."""
        return list(Role)[self.rank - 1] if self.rank > 0 else None


class Token(Model):
    name: Name
    role: Role
    secret_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: float  # wall clock, seconds since the epoch
    expires_at: float | None = None  # None: never
    created_by: str = ""  # the actor that made it ("token:alice@n1", "bootstrap")

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(self.secret_sha256, hash_secret(secret))


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def bearer(name: str, secret: str) -> str:
    """What a client sends (``Authorization: Bearer <this>``) and what is shown once."""
    return f"{name}.{secret}"


def split_bearer(value: str) -> tuple[str, str] | None:
    """``(name, secret)`` of a presented token, or None if it cannot be one of ours."""
    name, dot, secret = value.strip().partition(".")
    if not dot or not secret:
        return None
    try:
        check_name(name)
    except ValueError:
        return None
    return name, secret


def issue(
    name: str,
    role: Role,
    now: float,
    expires_at: float | None = None,
    created_by: str = "",
) -> tuple[Token, str]:
    """A new token record and the bearer string to hand out (once)."""
    secret = new_secret()
    token = Token(
        name=name,
        role=role,
        secret_sha256=hash_secret(secret),
        created_at=now,
        expires_at=expires_at,
        created_by=created_by,
    )
    return token, bearer(name, secret)
