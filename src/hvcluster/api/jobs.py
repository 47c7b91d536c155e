"""The one job per VM (:mod:`hvcluster.store.jobs`) as the API routes that create one
(a migration, a storage move, a checkpoint operation) refuse a VM another job holds.

The store's create enforces the rule (the record and the VM's job key in one transaction);
these say which job holds the VM: before creating (a clear 409 without a failed write) and
after a create that lost the race to another job.
"""

from __future__ import annotations

from typing import TypeVar

from hvcluster.api.context import ApiContext
from hvcluster.models.errors import Conflict
from hvcluster.store.jobs import busy

R = TypeVar("R")


async def refuse_if_busy(ctx: ApiContext, vm: str) -> None:
    """Refuse (409) a new job of ``vm`` while another holds it, naming that job."""
    under_way = await busy(ctx.store, ctx.keys, vm)
    if under_way is not None:
        raise Conflict(under_way)


async def created(ctx: ApiContext, vm: str, rec: R | None, what: str) -> R:
    """The record a create returned; None (another job took the VM since
    :func:`refuse_if_busy`) is refused (409), naming that job if it still holds the VM."""
    if rec is None:
        taken = await busy(ctx.store, ctx.keys, vm)
        raise Conflict(taken or f"vm {vm}: {what} could not be stored; try again")
    return rec
