"""What the agent's workers on the job records only their node's agent acts on (storage
moves, checkpoint operations) share: the loop that reads the records, woken by a change
under their prefix or every ``interval``, one task per record under way, and the removal
of a finished record once it is older than the worker's ``retain_s``.

A removal compares the record's mod revision as read (a record changed since is left for a
later cycle) and deletes the VM's job key too when it still names the record
(:func:`hvcluster.store.jobs.release_if_named`).
"""

from __future__ import annotations

import asyncio

from hvcluster.agent.node import NodeAgent
from hvcluster.models.event import Say
from hvcluster.store.base import Compare, Delete, Store
from hvcluster.store.follow import run_cycles_with_tasks, wake_on_changes
from hvcluster.store.jobs import Record, release_if_named
from hvcluster.store.keys import Keys
from hvcluster.store.reads import Reader


class JobFailed(Exception):
    """Why a record's work cannot go on: the record fails with this reason."""


class OwnedJobs:
    """The base of a worker: ``what`` names it in logs, ``prefix`` is where its records
    are, :meth:`cycle` is its own."""

    what = ""
    retain_s = 86400.0  # finished records are kept this long

    def __init__(self, store: Store, keys: Keys, agent: NodeAgent, say: Say, prefix: str) -> None:
        self.store, self.keys, self.agent, self.say = store, keys, agent, say
        self.prefix = prefix
        self.me = agent.me.name
        self.driver = agent.driver
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.wake = asyncio.Event()
        self.read = Reader(store, keys)

    async def run(self, interval: float = 1.0) -> None:
        sleep = self.agent.clock.sleep  # when it stops, so do the tasks (and what they run)
        await run_cycles_with_tasks(self.what, self.cycle, self.wake, interval, sleep, self.tasks)

    async def watch(self) -> None:
        await wake_on_changes(self.store, self.prefix, self.wake, self.agent.clock.sleep)

    async def cycle(self) -> None:
        raise NotImplementedError

    def forget_ended_tasks(self) -> None:
        for rid in [r for r, task in self.tasks.items() if task.done()]:
            self.tasks.pop(rid)

    async def prune_if_old(self, key: str, rec: Record, mod_revision: int) -> None:
        """Remove ``rec`` (at ``key``, as read at ``mod_revision``) if it is finished and
        older than :attr:`retain_s`."""
        if rec.active or max(rec.updated, rec.created) >= self.agent.clock.wall() - self.retain_s:
            return
        job = await self.store.get(self.keys.job(rec.vm))
        held, ops = release_if_named(self.keys, rec, job)  # if it still names it
        await self.store.txn([Compare.mod_is(key, mod_revision), *held], [Delete(key), *ops])
