"""What a cycle's decisions say, in a bounded number of events.

Every decision is said as an event with its reason, once (a wait that repeats every cycle is
said when its reason changes). A node with 125 VMs that stops answering would still say 125
waits at once, each VM's reason the same but for its name. :func:`bounded` says waits on one
cause (:attr:`~hvcluster.scheduler.decisions.Wait.on`) one by one up to
:data:`ONE_BY_ONE` of them, and more as one event that names how many, a sample of them
and the shared reason (a gone node's VMs staying put; VMs waiting for the same start
groups). Decisions that change something (a VM recovered, left failed) are
each said: one event per change, never per cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hvcluster.scheduler import decisions as dec

ONE_BY_ONE = 5  # waits on one cause said each; more are said as one event


@dataclass(frozen=True)
class Telling:
    """One event to say: its kind, subject and reason."""

    kind: str
    subject: str
    reason: str
    decision: dec.Decision | None = None  # the one it says, if one alone


def bounded(tellings: Sequence[Telling]) -> list[Telling]:
    """``tellings`` in order, with the waits on any one cause beyond :data:`ONE_BY_ONE`
    said as one event where the first of them was."""
    groups: dict[tuple[str, str], list[str]] = {}
    for t in tellings:
        if isinstance(t.decision, dec.Wait) and t.decision.on:
            groups.setdefault((t.decision.on, t.decision.cause), []).append(t.subject)
    out: list[Telling] = []
    for t in tellings:
        d = t.decision
        if not isinstance(d, dec.Wait) or not d.on:
            out.append(t)
            continue
        subjects = groups[(d.on, d.cause)]
        if len(subjects) <= ONE_BY_ONE:
            out.append(t)
        elif subjects[0] == t.subject:
            names = [s.removeprefix("vm/") for s in subjects]
            why = f"{len(names)} VMs {d.doing} ({dec.named(names)}): {d.cause}"
            out.append(Telling(t.kind, d.on, why))
    return out
