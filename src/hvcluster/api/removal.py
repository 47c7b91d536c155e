"""Removing a cluster object that VMs refer to (a volume, a switch): refused while any VM's
spec uses it, and committed only if neither the object nor any VM spec changed since read."""

from __future__ import annotations

from collections.abc import Callable

from hvcluster.api.context import ApiContext
from hvcluster.api.reads import decode_all
from hvcluster.api.views import View
from hvcluster.models.errors import Conflict, NotFound
from hvcluster.models.vm import VMSpec
from hvcluster.store.base import Compare, Delete, Get

UsersOf = Callable[[dict[str, VMSpec], str], list[str]]


class Removed(View):
    name: str
    revision: int


async def remove_unused(ctx: ApiContext, kind: str, key: str, name: str, users: UsersOf) -> Removed:
    """Delete ``key`` (the ``kind`` called ``name``) unless ``users`` finds VMs using it."""
    result = await ctx.store.txn((), [Get(key), Get(ctx.keys.prefix("vms"), True)])
    found, vm_kvs = result.gets
    if not found:
        raise NotFound(f"{kind} {name!r} not found")
    specs = await decode_all(VMSpec, ctx.keys, "vms", vm_kvs, ctx.corrupt)
    used = users({n: s for n, (s, _) in specs.items.items()}, name)
    if used:
        raise Conflict(f"{kind} {name!r} is used by VM(s) {', '.join(used)}; delete them first")
    # Compare the object and every VM spec read: a VM changed meanwhile means decide again.
    guard = [Compare.mod_is(key, found[0].mod_revision)]
    guard += [Compare.mod_is(kv.key, kv.mod_revision) for kv in vm_kvs]
    done = await ctx.store.txn(guard, [Delete(key)])
    if not done.succeeded:
        raise Conflict(f"{kind} {name!r} or a VM changed while removing it; try again")
    await ctx.record(
        f"{kind}.removed", f"{kind}/{name}", f"{kind} {name} removed", {"revision": done.revision}
    )
    return Removed(name=name, revision=done.revision)
