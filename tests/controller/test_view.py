"""The controller's snapshot: a placement or status of an older VM of the same name is not
the new VM's (it would wait for ever on a report of a process long gone)."""

from __future__ import annotations

from hvcluster.controller.notes import ControllerNotes
from hvcluster.controller.view import build_snapshot
from hvcluster.models.base import Model, encode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.lifecycle import VMState
from hvcluster.models.vm import Placement, VMSpec, VMStatus
from hvcluster.store.reads import Decoded, Stored
from hvcluster.store.state import ClusterState

OLD, NEW = "0" * 32, "1" * 32


def one(value: Model, name: str = "web") -> Decoded:  # type: ignore[type-arg]
    return Decoded(items={name: Stored(value, encode(value), 7)}, present={name})


def test_an_older_vms_placement_and_status_are_ignored_but_their_epochs_stay_below() -> None:
    state = ClusterState(
        config=ClusterConfig(),
        nodes=Decoded(),
        alive=Decoded(),
        vms=one(VMSpec(name="web", uid=NEW)),
        placements=one(Placement(node="n1", epoch=4, uid=OLD)),
        statuses=one(VMStatus(vm="web", node="n1", epoch=5, state=VMState.RUNNING, uid=OLD)),
        corrupt=[],
    )
    vm = build_snapshot(state, ControllerNotes(started=0.0), now=100.0).vms["web"]
    assert vm.placement is None and vm.status is None and vm.active_on is None
    assert vm.next_epoch == 6  # above the old VM's, which its node may still run
    same = ClusterState(
        config=ClusterConfig(),
        nodes=Decoded(),
        alive=Decoded(),
        vms=one(VMSpec(name="web", uid=OLD)),
        placements=state.placements,
        statuses=state.statuses,
        corrupt=[],
    )
    own = build_snapshot(same, ControllerNotes(started=0.0), now=100.0).vms["web"]
    assert own.placement is not None and own.active_on == "n1"
