from __future__ import annotations

import itertools
from enum import StrEnum

import pytest

from hvcluster.models.errors import IllegalTransition
from hvcluster.models.lifecycle import (
    MIGRATION_LIFECYCLE,
    NODE_LIFECYCLE,
    VM_LIFECYCLE,
    Lifecycle,
    MigrationState,
    NodeAdminState,
    VMState,
    vm_status_change,
)
from hvcluster.models.vm import VMStatus

CASES: list[tuple[Lifecycle[StrEnum], type[StrEnum]]] = [
    (VM_LIFECYCLE, VMState),  # type: ignore[list-item]
    (NODE_LIFECYCLE, NodeAdminState),  # type: ignore[list-item]
    (MIGRATION_LIFECYCLE, MigrationState),  # type: ignore[list-item]
]


@pytest.mark.parametrize(("lifecycle", "states"), CASES, ids=lambda c: getattr(c, "kind", ""))
def test_every_move_not_in_the_table_is_refused(
    lifecycle: Lifecycle[StrEnum], states: type[StrEnum]
) -> None:
    refused = 0
    for current, target in itertools.product(states, states):
        listed = current == target or target in lifecycle.moves.get(current, frozenset())
        if listed:
            assert lifecycle.check(current, target) is target
        else:
            refused += 1
            with pytest.raises(IllegalTransition) as info:
                lifecycle.check(current, target)
            assert current.value in str(info.value)
            assert target.value in str(info.value)
    assert refused > 0


def test_every_state_has_a_row() -> None:
    for lifecycle, states in CASES:
        assert set(lifecycle.moves) == set(states), lifecycle.kind


def test_migration_cannot_be_cancelled_after_the_switch() -> None:
    with pytest.raises(IllegalTransition):
        MIGRATION_LIFECYCLE.check(MigrationState.SWITCHING, MigrationState.CANCELLED)
    assert MIGRATION_LIFECYCLE.is_final(MigrationState.DONE)
    assert not MIGRATION_LIFECYCLE.is_final(MigrationState.TRANSFERRING)


def test_specific_vm_moves() -> None:
    assert VM_LIFECYCLE.allowed(VMState.RUNNING, VMState.MIGRATING)
    assert not VM_LIFECYCLE.allowed(VMState.STOPPED, VMState.RUNNING)
    assert not VM_LIFECYCLE.allowed(VMState.STOPPING, VMState.RUNNING)


def test_a_vm_status_follows_the_lifecycle_within_one_run_only() -> None:
    def st(state: VMState, node: str = "n1", epoch: int = 3) -> VMStatus:
        return VMStatus(vm="web", node=node, epoch=epoch, state=state)

    assert vm_status_change(None, st(VMState.RUNNING)) is None  # the first report
    assert vm_status_change(st(VMState.STARTING), st(VMState.RUNNING)) is None
    assert vm_status_change(st(VMState.RUNNING), st(VMState.STARTING)) is None  # a restart
    assert vm_status_change(st(VMState.STOPPED), st(VMState.RUNNING)) == (
        "vm status stopped -> running on n1 at epoch 3 is not a move of the VM lifecycle"
    )
    assert vm_status_change(st(VMState.STOPPED), st(VMState.RUNNING, "n2")) is None
    assert vm_status_change(st(VMState.STOPPED), st(VMState.RUNNING, epoch=4)) is None
    assert vm_status_change(st(VMState.FAILED, ""), st(VMState.FAILED, "")) is None
    left = st(VMState.STOPPED, "")
    assert "on no node" in str(vm_status_change(left, st(VMState.RUNNING, "")))
