"""API tokens in the store (``tokens/<name>``): added only if absent (read through store/reads.py).

The API checks every request against these records; the CLI's bootstrap path
(``hvc token create ... --store-endpoints``) and the tests add the first one directly.
"""

from __future__ import annotations

from hvcluster.models.base import encode
from hvcluster.models.errors import Conflict
from hvcluster.models.token import Token
from hvcluster.store.base import Compare, Put, Store
from hvcluster.store.keys import Keys


async def add_token(store: Store, keys: Keys, token: Token) -> int:
    """Store ``token``; raise :class:`Conflict` if one of that name exists. The revision."""
    key = keys.token(token.name)
    result = await store.txn([Compare.absent(key)], [Put(key, encode(token))])
    if not result.succeeded:
        raise Conflict(f"token {token.name!r} already exists (revoke it first to replace it)")
    return result.revision
