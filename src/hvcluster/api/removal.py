"""Removing a cluster object that VMs refer to (a volume, a switch): refused while any VM's
spec uses it, and committed only if neither the object nor any VM spec changed since read.

The check reads every spec (one revision, in pages: any number of VMs) and the commit
compares two things whatever their number: the object as read, and "no key under ``vms/``
written after the read's revision" (one compare on the prefix). A VM created or changed in
between fails the commit, and the check runs again on what is there now. A VM deleted in
between does not: it can only have stopped using the object.
"""

from __future__ import annotations

from collections.abc import Callable

from hvcluster.api.context import ApiContext
from hvcluster.api.views import View
from hvcluster.models.errors import Conflict, NotFound
from hvcluster.models.vm import VMSpec
from hvcluster.store.base import Compare, Delete, Get
from hvcluster.store.reads import decode_many

UsersOf = Callable[[dict[str, VMSpec], str], list[str]]

ATTEMPTS = 5  # checks run again while VM specs keep changing under the commit
NAMED = 10  # VMs named in a refusal; more are counted


class Removed(View):
    name: str
    revision: int


async def remove_unused(ctx: ApiContext, kind: str, key: str, name: str, users: UsersOf) -> Removed:
    """Delete ``key`` (the ``kind`` called ``name``) unless ``users`` finds VMs using it."""
    vms = ctx.keys.prefix("vms")
    for _ in range(ATTEMPTS):
        read = await ctx.store.txn((), [Get(key), Get(vms, True)])  # one revision, any size
        found, vm_kvs = read.gets
        if not found:
            raise NotFound(f"{kind} {name!r} not found")
        specs = await decode_many(VMSpec, ctx.keys.prefix("vms"), vm_kvs, ctx.corrupt)
        used = users(specs.by_name(), name)
        if used:
            raise Conflict(f"{kind} {name!r} is used by VM(s) {_names(used)}; delete them first")
        if specs.corrupt:
            unreadable = sorted(specs.unreadable)
            raise Conflict(
                f"{kind} {name!r}: cannot tell whether VM(s) {_names(unreadable)} use it (their "
                "specs do not decode); fix or delete them first"
            )
        guard = [
            Compare.mod_is(key, found[0].mod_revision),
            Compare.unchanged_since(vms, read.revision),
        ]
        done = await ctx.store.txn(guard, [Delete(key)])
        if done.succeeded:
            await ctx.record(
                f"{kind}.removed",
                f"{kind}/{name}",
                f"{kind} {name} removed",
                {"revision": done.revision},
            )
            return Removed(name=name, revision=done.revision)
    raise Conflict(f"{kind} {name!r} or VM specs kept changing while removing it; try again")


def _names(vms: list[str]) -> str:
    shown = ", ".join(vms[:NAMED])
    return shown if len(vms) <= NAMED else f"{shown} and {len(vms) - NAMED} more"
