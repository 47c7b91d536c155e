"""What a node agent must do to make its host match etcd: a pure function of what it saw.

The agent reads specs, placements and statuses from the store and the VMs its driver runs,
and :func:`plan_local` says what to do. No I/O here, time comes in as an argument: the
executor (:mod:`hvcluster.agent.node`) carries the actions out, each start guarded by a
transaction on the placement and the agent's own lease.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hvcluster.models.lifecycle import VMState
from hvcluster.models.vm import Placement, VMSpec, VMStatus, same_vm


@dataclass(frozen=True)
class SeenPlacement:
    """A placement as read, with the exact bytes and revision the start guard compares."""

    placement: Placement
    raw: bytes
    mod_revision: int


@dataclass(frozen=True)
class LocalVM:
    """A VM the driver runs on this host."""

    name: str
    state: VMState
    pid: int | None
    epoch: int
    since: float
    cpu_model: str = ""  # the CPU model its guest was given ("": not known)
    reason: str = ""  # why the driver sees it so: a crash's or a guest failure's cause


@dataclass(frozen=True)
class Start:
    vm: str
    spec: VMSpec
    seen: SeenPlacement
    restarts: int  # local restarts already made in the period
    restart: bool  # True: it died unasked and this start is a local restart
    reason: str


@dataclass(frozen=True)
class Kill:
    """Stop a VM at once: it is no longer ours to run (moved, deleted, or a stale epoch)."""

    vm: str
    reason: str


@dataclass(frozen=True)
class Shutdown:
    """Stop a VM gracefully: its desired state is stopped, or it is being moved cold.
    ``seen`` is None when the VM has no placement left to report its status under."""

    vm: str
    seen: SeenPlacement | None
    reason: str


@dataclass(frozen=True)
class Report:
    """Write ``status/<vm>`` (guarded by the placement) because it differs from the truth."""

    status: VMStatus
    seen: SeenPlacement
    reason: str


@dataclass(frozen=True)
class ReportStopped:
    """Write ``status/<vm>`` as stopped for a VM that is not placed here (no placement, or
    one on another node) and does not run here, while its status still says this host runs
    it at ``epoch``: the host died with it (its VMs died with it) and its new agent found
    nothing to run. Left so, the controller would wait for it to stop here before starting it
    anywhere, forever: asked to start it again, or when the node it was recovered to died
    too before that node reported it. ``seen``: the placement elsewhere, as read (the write
    holds it); None: no placement (the write holds its absence)."""

    vm: str
    epoch: int
    reason: str
    seen: SeenPlacement | None = None


Action = Start | Kill | Shutdown | Report | ReportStopped


ACTIVE = frozenset({VMState.RUNNING, VMState.PAUSED, VMState.STARTING, VMState.MIGRATING})


@dataclass(frozen=True)
class Limits:
    restart_threshold: int  # local restarts allowed in the period, then the VM is left failed
    restart_period_s: float


def plan_local(
    me: str,
    now: float,
    specs: Mapping[str, VMSpec],
    placements: Mapping[str, SeenPlacement],
    statuses: Mapping[str, VMStatus],
    local: Mapping[str, LocalVM],
    crashes: Mapping[str, tuple[float, ...]],
    limits: Limits,
    incoming: frozenset[str] = frozenset(),
    unreadable: frozenset[str] = frozenset(),
) -> list[Action]:
    """The actions that bring this host in line with the cluster's intent.

    ``crashes``: per VM, the times this agent restarted it after it died unasked (for the
    restart threshold: that many restarts in the period, then the VM is left failed).
    ``incoming``: VMs this host holds as migration targets; they are not ours yet, and not
    killed for that; nor started, stopped or reported while the migration finishes.
    ``unreadable``: VMs whose spec or placement is corrupt in the store: left as they are
    (never killed nor started on a value we cannot read).

    A placement or status whose uid is not its spec's is an older VM's of the same name
    (deleted, perhaps still stopping): it counts as absent, never as the new VM's.
    """
    placements = {
        n: p for n, p in placements.items() if n not in specs or same_vm(specs[n], p.placement.uid)
    }
    statuses = {n: s for n, s in statuses.items() if n not in specs or same_vm(specs[n], s.uid)}
    actions: list[Action] = []
    # 1. Anything running here that is not placed here at the epoch it started with: kill.
    for name, here in sorted(local.items()):
        if name in incoming or name in unreadable:
            continue
        if here.state in (VMState.STOPPED, VMState.FAILED):
            continue
        seen = placements.get(name)
        spec = specs.get(name)
        if seen is None and spec is not None and spec.desired_state == "stopped":
            actions.append(Shutdown(name, None, f"vm {name} is to be stopped"))
        elif spec is None:
            actions.append(Kill(name, f"vm {name} was deleted"))
        elif seen is None:
            actions.append(Kill(name, f"vm {name} has no placement any more"))
        elif seen.placement.node != me:
            actions.append(Kill(name, f"vm {name} is now placed on {seen.placement.node}"))
        elif seen.placement.epoch != here.epoch:
            actions.append(
                Kill(
                    name,
                    f"vm {name} runs epoch {here.epoch} but the placement is at epoch "
                    f"{seen.placement.epoch}",
                )
            )
    killed = {a.vm for a in actions if isinstance(a, Kill)}

    # 2. Everything placed here: start, stop, restart or report.
    for name, seen in sorted(placements.items()):
        spec = specs.get(name)
        if seen.placement.node != me or spec is None or name in unreadable:
            continue
        if name in incoming:
            continue  # arriving by migration: the migration worker runs it once it is ours
        epoch = seen.placement.epoch
        vm = local.get(name) if name not in killed else None
        running = vm is not None and vm.state not in (VMState.STOPPED, VMState.FAILED)
        status = statuses.get(name)
        mine = status is not None and status.node == me and status.epoch == epoch
        moving_to = seen.placement.moving_to
        if spec.desired_state == "stopped" or moving_to:
            why = f"vm {name} moves to {moving_to}" if moving_to else f"vm {name} is to be stopped"
            if running:
                actions.append(Shutdown(name, seen, why))
            elif not (mine and status is not None and status.state is VMState.STOPPED):
                actions.append(_report(spec, seen, me, VMState.STOPPED, now, f"{why}: stopped"))
            continue
        if running:
            assert vm is not None
            if (
                not mine
                or status is None
                or status.state is not vm.state
                or status.pid != vm.pid
                or status.cpu_model != vm.cpu_model
            ):
                restarts = status.restarts if mine and status else 0
                more = {"pid": vm.pid, "restarts": restarts, "cpu_model": vm.cpu_model}
                why = f"vm {name} is {vm.state.value} here"
                actions.append(_report(spec, seen, me, vm.state, vm.since, why, **more))
            continue
        # Placed here, to run, not running.
        if mine and status is not None and status.state is VMState.FAILED:
            continue  # left failed by us; the controller decides what next
        recent = [t for t in crashes.get(name, ()) if now - t <= limits.restart_period_s]
        was_running = mine and status is not None and status.state in ACTIVE
        # The driver's cause (a QEMU crash, a guest panic, no heartbeat): events say which.
        cause = f" ({vm.reason})" if vm is not None and vm.state is VMState.FAILED else ""
        if was_running and len(recent) >= limits.restart_threshold:
            crashed = f"crashed {len(recent)} times in {limits.restart_period_s:.0f}s{cause}"
            why = f"vm {name} left failed: {crashed}, above the restart threshold "
            why += f"{limits.restart_threshold}"
            failed = {"restarts": len(recent), "last_error": crashed}
            actions.append(_report(spec, seen, me, VMState.FAILED, now, why, **failed))
            continue
        reason = (
            # counted as an administrator reads it: this restart is the first, not the 0th
            f"vm {name} stopped unexpectedly{cause}; restart {len(recent) + 1} of at most "
            f"{limits.restart_threshold} within {limits.restart_period_s:.0f}s"
            if was_running
            else f"vm {name} is placed here at epoch {epoch}"
        )
        actions.append(Start(name, spec, seen, len(recent), was_running, reason))

    # 3. Not placed here, not running here, yet reported active here: say it stopped.
    for name, status in sorted(statuses.items()):
        if name in incoming or name in unreadable or name not in specs:
            continue
        elsewhere = placements.get(name)
        if elsewhere is not None and elsewhere.placement.node == me:
            continue  # placed here: step 2 starts or reports it
        found = local.get(name)
        if status.node != me or status.state not in ACTIVE:
            continue
        if found is not None and found.state not in (VMState.STOPPED, VMState.FAILED):
            continue  # still running: step 1 stops it, and its stop reports it
        where = (
            "has no placement"
            if elsewhere is None
            else f"is placed on {elsewhere.placement.node} (epoch {elsewhere.placement.epoch})"
        )
        why = f"vm {name} {where} and does not run on {me}: stopped"
        actions.append(ReportStopped(name, status.epoch, why, elsewhere))
    return actions


def _report(
    spec: VMSpec, seen: SeenPlacement, me: str, state: VMState, since: float, why: str, **more: Any
) -> Report:
    """``spec``'s VM seen ``state`` here since ``since`` (at the placement's epoch): its status
    to write, and ``why``. ``more``: the status's other fields (pid, restarts, ...)."""
    status = VMStatus(
        vm=spec.name,
        node=me,
        epoch=seen.placement.epoch,
        state=state,
        since=since,
        uid=spec.uid,
        **more,
    )
    return Report(status, seen, why)
