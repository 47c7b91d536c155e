"""The node agent's local plan: what to start, kill, stop and report."""

from __future__ import annotations

from hvcluster.agent.reconcile import (
    Kill,
    Limits,
    LocalVM,
    Report,
    ReportStopped,
    SeenPlacement,
    Shutdown,
    Start,
    plan_local,
)
from hvcluster.models.base import encode
from hvcluster.models.lifecycle import VMState
from hvcluster.models.vm import Placement, VMSpec, VMStatus

LIMITS = Limits(restart_threshold=2, restart_period_s=100.0)


def seen(node: str, epoch: int = 1) -> SeenPlacement:
    p = Placement(node=node, epoch=epoch)
    return SeenPlacement(p, encode(p), mod_revision=10 + epoch)


def spec(name: str = "a", desired: str = "running") -> VMSpec:
    return VMSpec(name=name, desired_state=desired)  # type: ignore[arg-type]


def running(name: str = "a", epoch: int = 1, pid: int = 42) -> LocalVM:
    return LocalVM(name, VMState.RUNNING, pid, epoch, since=5.0)


def status(state: VMState, node: str = "n1", epoch: int = 1, pid: int | None = 42) -> VMStatus:
    return VMStatus(vm="a", node=node, epoch=epoch, state=state, pid=pid, since=5.0)


def plan(**kw: object) -> list[object]:
    args: dict[str, object] = {
        "me": "n1",
        "now": 50.0,
        "specs": {"a": spec()},
        "placements": {},
        "statuses": {},
        "local": {},
        "crashes": {},
        "limits": LIMITS,
    }
    args.update(kw)
    return plan_local(**args)  # type: ignore[arg-type]


def test_starts_what_is_placed_here_and_nothing_else() -> None:
    actions = plan(placements={"a": seen("n1")})
    assert len(actions) == 1
    start = actions[0]
    assert isinstance(start, Start) and start.vm == "a" and not start.restart
    assert plan(placements={"a": seen("n2")}) == []


def test_kills_a_vm_placed_elsewhere_deleted_unplaced_or_stale() -> None:
    local = {"a": running()}
    moved = plan(placements={"a": seen("n2", 2)}, local=local)
    assert [type(a) for a in moved] == [Kill] and "n2" in moved[0].reason  # type: ignore[attr-defined]
    assert [type(a) for a in plan(placements={}, local=local)] == [Kill]
    assert [type(a) for a in plan(specs={}, placements={"a": seen("n1")}, local=local)] == [Kill]
    stale = plan(placements={"a": seen("n1", 3)}, local=local)
    # The stale copy is killed and the VM started again at the new epoch.
    assert [type(a) for a in stale] == [Kill, Start]


def test_incoming_migration_targets_are_not_killed() -> None:
    assert (
        plan(placements={"a": seen("n2")}, local={"a": running()}, incoming=frozenset({"a"})) == []
    )


def test_reports_a_running_vm_once() -> None:
    actions = plan(placements={"a": seen("n1")}, local={"a": running()})
    assert [type(a) for a in actions] == [Report]
    report = actions[0]
    assert isinstance(report, Report) and report.status.state is VMState.RUNNING
    quiet = plan(
        placements={"a": seen("n1")},
        local={"a": running()},
        statuses={"a": status(VMState.RUNNING)},
    )
    assert quiet == []


def test_desired_stopped_shuts_down_then_reports_stopped() -> None:
    specs = {"a": spec(desired="stopped")}
    actions = plan(specs=specs, placements={"a": seen("n1")}, local={"a": running()})
    assert [type(a) for a in actions] == [Shutdown]
    after = plan(specs=specs, placements={"a": seen("n1")})
    assert [type(a) for a in after] == [Report]
    assert after[0].status.state is VMState.STOPPED  # type: ignore[attr-defined]
    done = plan(
        specs=specs, placements={"a": seen("n1")}, statuses={"a": status(VMState.STOPPED, pid=None)}
    )
    assert done == []


def test_a_crashed_vm_is_restarted_up_to_the_threshold_then_left_failed() -> None:
    base = {"placements": {"a": seen("n1")}, "statuses": {"a": status(VMState.RUNNING)}}
    first = plan(**base)
    assert isinstance(first[0], Start) and first[0].restart and first[0].restarts == 0
    second = plan(**base, crashes={"a": (45.0,)})
    assert isinstance(second[0], Start) and second[0].restarts == 1
    third = plan(**base, crashes={"a": (40.0, 45.0)})
    assert isinstance(third[0], Report) and third[0].status.state is VMState.FAILED
    assert "crashed 2 times" in third[0].reason
    # Crashes older than the period no longer count.
    old = plan(**base, crashes={"a": (-100.0, -90.0)})
    assert isinstance(old[0], Start)


def test_a_restart_and_a_left_failed_vm_name_the_drivers_cause() -> None:
    """The driver's reason (a QEMU crash, a guest panic, no heartbeat) is in the events."""
    failed = LocalVM("a", VMState.FAILED, None, 1, since=45.0, reason="guest panicked (pvpanic)")
    base = {
        "placements": {"a": seen("n1")},
        "statuses": {"a": status(VMState.RUNNING)},
        "local": {"a": failed},
    }
    first = plan(**base)
    assert isinstance(first[0], Start) and first[0].restart
    assert "stopped unexpectedly (guest panicked (pvpanic))" in first[0].reason
    last = plan(**base, crashes={"a": (40.0, 45.0)})
    assert isinstance(last[0], Report) and last[0].status.state is VMState.FAILED
    assert last[0].status.last_error == "crashed 2 times in 100s (guest panicked (pvpanic))"


def test_left_failed_stays_failed() -> None:
    assert plan(placements={"a": seen("n1")}, statuses={"a": status(VMState.FAILED)}) == []
    # ... but a new epoch (the controller moved it back here) starts it again.
    actions = plan(placements={"a": seen("n1", 2)}, statuses={"a": status(VMState.FAILED)})
    assert isinstance(actions[0], Start) and not actions[0].restart


def test_a_cold_move_shuts_down_gracefully_and_reports_stopped() -> None:
    p = Placement(node="n1", epoch=1, moving_to="n2")
    moving = SeenPlacement(p, encode(p), 12)
    actions = plan(placements={"a": moving}, local={"a": running()})
    assert [type(a) for a in actions] == [Shutdown] and "moves to n2" in actions[0].reason  # type: ignore[attr-defined]
    after = plan(placements={"a": moving}, statuses={"a": status(VMState.RUNNING)})
    assert [type(a) for a in after] == [Report]
    assert after[0].status.state is VMState.STOPPED  # type: ignore[attr-defined]


def test_unplaced_but_desired_stopped_is_shut_down_not_killed() -> None:
    actions = plan(specs={"a": spec(desired="stopped")}, local={"a": running()})
    assert [type(a) for a in actions] == [Shutdown]


def test_a_vm_reported_here_that_died_with_the_host_unplaced_is_reported_stopped() -> None:
    """The host died running the VM, the VM was asked to stop meanwhile (its placement
    removed), and the host's new agent runs nothing: the status that still says "running
    here" is corrected, else a later start would wait for it to stop here forever (found by
    the simulator's fuzzer, seed 84)."""
    was = status(VMState.RUNNING, epoch=3)
    actions = plan(specs={"a": spec(desired="stopped")}, statuses={"a": was})
    why = "vm a has no placement and does not run on n1: stopped"
    assert actions == [ReportStopped("a", 3, why)]
    # a local run that died counts as not running; one still running is step 1's to stop
    dead = LocalVM("a", VMState.FAILED, None, 3, since=5.0)
    assert [type(a) for a in plan(statuses={"a": was}, local={"a": dead})] == [ReportStopped]
    assert [type(a) for a in plan(statuses={"a": was}, local={"a": running(epoch=3)})] == [Kill]
    # not ours to correct: another host's report, a stopped one, one placed here, a moving
    # or unknown VM
    assert plan(statuses={"a": status(VMState.RUNNING, node="n2")}) == []
    assert plan(statuses={"a": status(VMState.STOPPED)}) == []
    assert not any(isinstance(a, ReportStopped) for a in plan(
        placements={"a": seen("n1")}, statuses={"a": was}
    ))  # fmt: skip
    assert plan(statuses={"a": was}, incoming=frozenset({"a"})) == []
    assert plan(specs={}, statuses={"a": was}) == []


def test_a_vm_reported_here_that_died_with_the_host_placed_elsewhere_is_reported_stopped() -> None:
    """The host died running the VM, which was recovered to n2, and n2 died too before it
    reported the VM: the status that still says "running on n1" (alive again, running
    nothing) made the controller wait for it to stop there, forever (found by the
    simulator's fuzzer, seeds 2776 and 3563). The write holds the placement as read."""
    was = status(VMState.RUNNING, epoch=1)
    elsewhere = seen("n2", epoch=2)
    actions = plan(placements={"a": elsewhere}, statuses={"a": was})
    why = "vm a is placed on n2 (epoch 2) and does not run on n1: stopped"
    assert actions == [ReportStopped("a", 1, why, elsewhere)]


def test_unreadable_vms_are_left_alone() -> None:
    assert plan(local={"a": running()}, unreadable=frozenset({"a"})) == []
    assert plan(placements={"a": seen("n1")}, unreadable=frozenset({"a"})) == []


def test_an_older_vm_of_the_same_name_is_not_this_one() -> None:
    """A placement and status carrying another uid are a deleted VM's (still stopping here):
    its process is killed, never adopted, and its last report is not taken for the new VM's."""
    old, new = "0" * 32, "1" * 32
    p = Placement(node="n1", epoch=1, uid=old)
    stale = SeenPlacement(p, encode(p), mod_revision=11)
    was = status(VMState.RUNNING).model_copy(update={"uid": old})
    fresh = VMSpec(name="a", uid=new)
    actions = plan(
        specs={"a": fresh}, placements={"a": stale}, statuses={"a": was}, local={"a": running()}
    )
    assert [type(a) for a in actions] == [Kill]
    assert "no placement" in actions[0].reason  # type: ignore[attr-defined]
    # placed anew (the controller, above every epoch seen): started, and reported as its own
    q = Placement(node="n1", epoch=2, uid=new)
    placed = SeenPlacement(q, encode(q), mod_revision=12)
    [start] = plan(specs={"a": fresh}, placements={"a": placed}, statuses={"a": was})
    assert isinstance(start, Start) and not start.restart  # not a crash of the old one
    [report] = plan(
        specs={"a": fresh},
        placements={"a": placed},
        statuses={"a": was},
        local={"a": running(epoch=2)},
    )
    assert isinstance(report, Report) and report.status.uid == new
