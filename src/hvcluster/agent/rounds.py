"""A reconcile round's starts and status reports, written many to a transaction.

An agent given 1,000 VMs wrote, for each start, its status ``starting`` and then ``running``,
each after a read of the status it replaced: 4,000 round trips before the last guest ran.
Here the starts and reports of one round are :class:`~hvcluster.store.batches.Write` s
committed together (:func:`~hvcluster.store.batches.commit_all`, within etcd's limits), in
two waves: every ``starting`` (and report), then the guests started, then every ``running``.

Each write keeps the guards it had alone (rule 1 of docs/architecture.md): a start commits
only while its placement is the one seen, ``alive/<me>`` is bound to our lease and its
disks' locks are absent or ours; a report only while the placement is the one seen. The
status each replaces is the one this cycle read, compared on its mod revision (and checked
against the VM lifecycle): one changed since fails its own compare and is decided again
next cycle. A status that did not decode is read again first, as before (it is
overwritten as a new run). A failed batch is retried write by write, so one lost race never
holds the others back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hvcluster.agent.disks import DiskBusy
from hvcluster.agent.guestcpu import guest_spec
from hvcluster.agent.reconcile import Report, Start
from hvcluster.models.base import encode
from hvcluster.models.errors import DriverError
from hvcluster.models.lifecycle import VMState
from hvcluster.models.vm import VMStatus
from hvcluster.store.base import Compare, Put
from hvcluster.store.batches import Write, commit_all
from hvcluster.store.reads import Decoded

if TYPE_CHECKING:
    from hvcluster.agent.node import NodeAgent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Started:
    action: Start
    status: VMStatus  # "running" (or paused) as the driver found it
    starting: VMStatus  # as written before the guest started: compared on its bytes
    sentence: str


async def carry_out(
    agent: NodeAgent, actions: Sequence[Start | Report], statuses: Decoded[VMStatus], now: float
) -> list[str]:
    """Start and report as ``actions`` say; a sentence for each done, in their order."""
    why_not = agent.may_start()
    writes: list[Write] = []
    planned: list[tuple[Start | Report, VMStatus]] = []
    for action in actions:
        if isinstance(action, Start) and why_not is not None:
            log.info("not starting %s: %s", action.vm, why_not)
            continue
        status = action.status if isinstance(action, Report) else _starting(agent, action, now)
        if status is None:
            continue
        held = await _held(agent, status, statuses)
        if held is None:
            continue
        guard = [Compare.value_is(agent.keys.placement(status.vm), action.seen.raw), *held]
        ops: list[Put] = [Put(agent.keys.status(status.vm), encode(status))]
        if isinstance(action, Start):
            guard.append(Compare(agent.keys.alive(agent.me.name), "lease", "==", agent.lease()))
            try:  # and the locks of its disks on volumes: absent, or already ours
                lock_compares, lock_puts = await agent.disks.lock_ops(action.spec)
            except DiskBusy as e:
                if agent.disk_busy.get(action.vm) != str(e):
                    agent.disk_busy[action.vm] = str(e)
                    await agent.say(
                        "vm.disk_busy", f"vm/{action.vm}", f"not starting {action.vm}: {e}"
                    )
                continue
            agent.disk_busy.pop(action.vm, None)
            guard += lock_compares
            ops += lock_puts
        writes.append(Write(tuple(guard), tuple(ops)))
        planned.append((action, status))
    said: list[str] = []
    started: list[_Started] = []
    for (action, status), ok in zip(planned, await commit_all(agent.store, writes), strict=True):
        if isinstance(action, Report):
            if ok:
                if status.state is VMState.FAILED:
                    await agent.say("vm.failed", f"vm/{status.vm}", action.reason)
                said.append(action.reason)
        elif not ok:
            log.info("start of %s skipped: placement or our lease changed", action.vm)
        elif (done := await _run(agent, action, status, now)) is not None:
            started.append(done)
    await _report_running(agent, started)
    for s in started:
        await agent.say("vm.started", f"vm/{s.action.vm}", s.sentence)
        said.append(s.sentence)
    return said


def _starting(agent: NodeAgent, action: Start, now: float) -> VMStatus:
    return VMStatus(
        vm=action.vm,
        node=agent.me.name,
        epoch=action.seen.placement.epoch,
        state=VMState.STARTING,
        since=now,
        restarts=action.restarts + (1 if action.restart else 0),
        uid=action.spec.uid,
    )


async def _held(
    agent: NodeAgent, status: VMStatus, statuses: Decoded[VMStatus]
) -> list[Compare] | None:
    """The compare holding the status ``status`` replaces, as this cycle read it."""
    if status.vm in statuses.unreadable:
        return await agent.status_held(status)  # read again: overwritten as a new run
    stored = statuses.items.get(status.vm)
    if not agent.may_replace(stored.value if stored else None, status):
        return None
    key = agent.keys.status(status.vm)
    return [Compare.mod_is(key, stored.mod_revision) if stored else Compare.absent(key)]


async def _run(agent: NodeAgent, action: Start, status: VMStatus, now: float) -> _Started | None:
    """Start the guest whose ``starting`` status committed; None if it failed (said)."""
    if action.restart:
        agent.crashes.setdefault(action.vm, []).append(now)
        agent.metrics.restarts.inc()
        await agent.say("vm.restarted", f"vm/{action.vm}", action.reason)
    epoch = status.epoch
    try:
        for done in await agent.disks.prepare(action.spec):
            await agent.say("vm.disk_prepared", f"vm/{action.vm}", f"{done} for {action.vm}")
        spec = guest_spec(action.spec, agent.facts)  # its CPU model: the spec's, or ours
        info = await agent.driver.start(spec, epoch)
    except Exception as e:  # a bug (ours or the driver's) fails this start, not the round
        if not isinstance(e, DriverError):
            log.exception("starting %s failed unexpectedly", action.vm)
        why = str(e) if isinstance(e, DriverError) else f"{type(e).__name__}: {e}"
        failed = status.model_copy(
            update={"state": VMState.FAILED, "last_error": why, "since": agent.clock.wall()}
        )
        await agent.report(failed, action.seen)
        agent.crashes.setdefault(action.vm, []).append(now)
        await agent.say(
            "vm.start_failed",
            f"vm/{action.vm}",
            f"vm {action.vm} failed to start on {agent.me.name}: {why}",
        )
        return None
    running = status.model_copy(
        update={
            "state": info.state,
            "pid": info.pid,
            "since": info.since or agent.clock.wall(),
            "cpu_model": info.cpu_model,
        }
    )
    sentence = f"started {action.vm} on {agent.me.name} at epoch {epoch} (pid {info.pid})"
    return _Started(action, running, status, sentence)


async def _report_running(agent: NodeAgent, started: Sequence[_Started]) -> None:
    """Every started guest's status, each replacing the very ``starting`` we wrote (its
    bytes compared) while its placement is the one seen."""
    writes = []
    for s in started:
        if not agent.may_replace(s.starting, s.status):
            continue
        key = agent.keys.status(s.action.vm)
        guard = (
            Compare.value_is(agent.keys.placement(s.action.vm), s.action.seen.raw),
            Compare.value_is(key, encode(s.starting)),
        )
        writes.append(Write(guard, (Put(key, encode(s.status)),)))
    await commit_all(agent.store, writes)
