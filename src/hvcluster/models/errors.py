"""The one error tree of hvcluster.

Every error we raise on purpose is an :class:`HvcError`. Layers raise the subclass that names
their concern; the API maps them to HTTP codes and the CLI prints their message, never a
traceback.
"""

from __future__ import annotations


class HvcError(Exception):
    """Base of every error hvcluster raises on purpose."""


class InvalidInput(HvcError):
    """Bad input from a user, a config file or the API. ``field`` names what was wrong."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class NotFound(HvcError):
    """A named object (VM, node, volume, ...) does not exist."""


class Conflict(HvcError):
    """The request contradicts current state (already exists, wrong state, lost a race)."""


class IllegalTransition(Conflict):
    """A lifecycle was asked to move from a state to one not allowed from it."""

    def __init__(self, kind: str, current: str, target: str) -> None:
        self.kind, self.current, self.target = kind, current, target
        super().__init__(f"{kind} cannot go from {current!r} to {target!r}")


class CorruptValue(HvcError):
    """A value read from the store does not decode. It is reported and skipped, never fatal."""

    def __init__(self, key: str, reason: str) -> None:
        self.key, self.reason = key, reason
        super().__init__(f"corrupt value at {key}: {reason}")


class Unauthenticated(HvcError):
    """No token, or one that is unknown, wrong, revoked or expired (HTTP 401)."""


class Forbidden(HvcError):
    """The token is valid but its role is below what the request needs (HTTP 403)."""


class StoreError(HvcError):
    """The store (etcd) failed or could not be reached."""


class StoreUnavailable(StoreError):
    """No answer from the store within the deadline; state is unknown, not changed."""


class LeaseLost(StoreError):
    """A lease expired or was revoked: every key bound to it is gone."""


class DriverError(HvcError):
    """Base of every error a hypervisor driver raises."""


class ConfigError(InvalidInput):
    """A configuration file or flag is invalid."""
