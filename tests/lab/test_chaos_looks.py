"""How a chaos run measures a recovery from the checker's looks: from the fault until the
first look after the last one that found an HA VM down."""

from __future__ import annotations

from hvcluster.lab.availability import Looks

UP: frozenset[str] = frozenset()
DOWN = frozenset({"chaos-1"})


def looks(*seen: tuple[float, frozenset[str]]) -> Looks:
    out = Looks()
    for t, down in seen:
        out.add(t, down)
    return out


def test_a_fault_that_took_nothing_down_needed_no_recovery() -> None:
    assert looks((10, UP), (11, UP), (12, UP)).recovery(10.5, 12) == (False, 0.0)


def test_the_recovery_ends_at_the_first_look_after_the_last_one_down() -> None:
    # running still (its host cut off), then down (fenced), up, down again, up for good
    seen = looks((9, DOWN), (10, UP), (11, UP), (12, DOWN), (13, UP), (14, DOWN), (16, UP))
    assert seen.recovery(10.5, 17) == (True, 16 - 10.5)
    assert seen.recovery(10.5, 12.5) == (True, 12.5 - 10.5)  # never up again: until the end


def test_running_since_needs_a_look_and_every_look_up() -> None:
    seen = looks((1, UP), (2, DOWN), (3, UP), (4, UP))
    assert seen.all_running_since(2.5) and not seen.all_running_since(1.5)
    assert not seen.all_running_since(5)
