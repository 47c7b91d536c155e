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
)

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
