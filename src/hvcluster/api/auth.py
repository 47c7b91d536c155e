"""Who is calling, and may they: a bearer token checked on every route.

:class:`Authorizer` is a dependency of the whole app (``FastAPI(dependencies=...)``), so no
route can be added without it. What a route needs follows from its method and path, in one
place (:func:`required_role`), so a new route gets a role without anyone remembering to:

* reads (GET) need ``reader``, except the token list (``admin``: who may do what is the
  admins' business);
* writes under ``/tokens``, ``/volumes``, ``/switches`` and ``/cluster`` (the cluster's
  configuration) need ``admin``;
* every other write (VMs, nodes, migrations, storage moves: actions) needs ``operator``;
* ``POST /probe/listen`` needs only ``reader``: it changes nothing in the cluster (a listener
  open for seconds, at most 32 at once) and is how ``cluster validate``, a read, checks
  migration ports from agent to agent;
* ``GET /healthz`` is open: load balancers and the lab ask it whether an agent answers; it
  says only the node's name and the store revision. ``GET /cluster/ca`` is open too: the
  CA certificate is public, and a joining host has no token yet;
* ``POST /join`` and ``POST /join/promote`` are open: a joining host has no API token, the
  one-use join token in the body is its credential, checked by the route (api/joining.py).

Agents call each other only while serving a request (``cluster validate``); they forward
that request's own token (:attr:`Caller.credential`), so a caller can never do more through
another agent than directly, and agents need no secret of their own.

Websockets (the VM consoles, ``api/consoles.py``) go through the same dependency: their
handshake is judged as the method ``WEBSOCKET``, which no rule counts as a read, so a console
needs ``operator`` (it types into a VM). Browsers cannot set a header on a websocket, so a
handshake may carry its token instead as a subprotocol ``hvc.token.NAME.SECRET`` (the server
never echoes that one back) or in the dashboard's session cookie, taken only from a page of
the agent's own origin (a page elsewhere cannot ride a user's cookie into a console).

No token, an unknown, wrong, revoked or expired one: 401 with ``WWW-Authenticate: Bearer``.
A valid token whose role is below the route's: 403, naming the role needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from hvcluster.models.errors import CorruptValue, Forbidden, Unauthenticated
from hvcluster.models.token import Role, Token, split_bearer
from hvcluster.store.base import Store
from hvcluster.store.keys import Keys
from hvcluster.store.reads import read_one_or_error

READS = frozenset({"GET", "HEAD"})
OPEN = frozenset({"/healthz", "/cluster/ca"})  # reads anyone may make
JOIN_WRITES = frozenset({"/join", "/join/promote"})  # credential: the join token in the body
ADMIN_ONLY = frozenset({"tokens"})  # areas whose reads need admin too
ADMIN_AREAS = frozenset({"tokens", "volumes", "switches", "cluster"})
READER_WRITES = frozenset({"/probe/listen"})
WEBSOCKET = "WEBSOCKET"  # the method a websocket handshake is judged as: never a read
TOKEN_SUBPROTOCOL = "hvc.token."  # + NAME.SECRET: a browser's way to send its token
SESSION_COOKIE = "hvc_session"  # the dashboard's session cookie (web/session.py), the token
# Declares the scheme in the OpenAPI document (the docs' "Authorize" button, API fuzzers);
# the header itself is read and judged here, with our own messages.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="NAME.SECRET as 'hvc token create' prints it",
)


@dataclass(frozen=True)
class Caller:
    """The token a request came with, once checked."""

    name: str
    role: Role
    credential: str  # the bearer token as presented: forwarded when asking other agents


def required_role(method: str, path: str) -> Role | None:
    """The least role that may make ``method path`` (``path`` under ``/api/v1``, a route's
    template or a concrete path: only literal segments decide); None: open to anyone."""
    method = method.upper()
    area = path.strip("/").split("/", 1)[0]
    if area in ADMIN_ONLY:
        return Role.ADMIN
    if method in READS:
        return None if path in OPEN else Role.READER
    if path in READER_WRITES:
        return Role.READER
    if path in JOIN_WRITES and method == "POST":
        return None
    return Role.ADMIN if area in ADMIN_AREAS else Role.OPERATOR


async def authenticate(store: Store, keys: Keys, header: str | None, now: float) -> Caller:
    """The caller an ``Authorization`` header names, or :class:`Unauthenticated` saying why."""
    if not header:
        raise Unauthenticated(
            "no API token: send 'Authorization: Bearer <token>' (hvc: --token, $HVC_TOKEN "
            "or the config file; 'hvc token create' makes one)"
        )
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    parts = split_bearer(value)
    if parts is None:
        raise Unauthenticated("malformed token: expected NAME.SECRET, as 'hvc token create' prints")
    name, secret = parts
    found = await read_one_or_error(store, keys.token(name), Token)
    if isinstance(found, CorruptValue):
        raise Unauthenticated(f"token {name!r} cannot be read ({found.reason}): make a new one")
    token = found.value if found is not None else None
    if token is None or not token.matches(secret):
        raise Unauthenticated(f"token {name!r} is unknown, revoked, or its secret is wrong")
    if token.expired(now):
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(token.expires_at or 0))
        raise Unauthenticated(f"token {name!r} expired at {when}")
    return Caller(name=name, role=token.role, credential=value.strip())


class Authorizer:
    """The app-wide dependency: checks the request's token against what its route needs and
    leaves the :class:`Caller` in ``request.state.caller`` (read by ``api.context``)."""

    def __init__(self, store: Store, keys: Keys, prefix: str) -> None:
        self.store, self.keys, self.prefix = store, keys, prefix

    async def __call__(
        self,
        request: HTTPConnection,
        _: HTTPAuthorizationCredentials | None = Security(BEARER),
    ) -> None:
        path = str(request.scope["path"])  # what the router matched
        if path.startswith(self.prefix + "/"):
            path = path[len(self.prefix) :]
        websocket = request.scope["type"] == "websocket"
        method = WEBSOCKET if websocket else str(request.scope["method"])
        needed = required_role(method, path)
        if needed is None:
            return
        header = request.headers.get("authorization")
        if header is None and websocket:
            header = websocket_credential(request)
        caller = await authenticate(self.store, self.keys, header, time.time())
        if not caller.role.allows(needed):
            raise Forbidden(
                f"{method} {path} needs the {needed.value} role or above; "
                f"token {caller.name!r} has the {caller.role.value} role"
            )
        request.state.caller = caller


def websocket_credential(connection: HTTPConnection) -> str | None:
    """A websocket handshake's token as an ``Authorization`` value: from a subprotocol
    ``hvc.token.NAME.SECRET``, else from the dashboard's cookie if the page that opened it is
    of this agent's own origin; None when it has neither."""
    offered = connection.headers.get("sec-websocket-protocol", "")
    for protocol in (p.strip() for p in offered.split(",")):
        if protocol.startswith(TOKEN_SUBPROTOCOL):
            return f"Bearer {protocol[len(TOKEN_SUBPROTOCOL) :]}"
    cookie = connection.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    origin = connection.headers.get("origin", "")
    if urlsplit(origin).netloc != connection.headers.get("host"):
        raise Unauthenticated(
            f"a console opened from another origin ({origin[:80] or 'none'}) cannot use the "
            "dashboard's session: send a token"
        )
    return f"Bearer {cookie}"
