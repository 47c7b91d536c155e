"""An entry in the cluster log (``events/<seq>``): what happened, to what, why, by whom."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from pydantic import Field

from hvcluster.models.base import Model


class Event(Model):
    time: float  # wall clock, seconds since the epoch
    kind: str = Field(min_length=1)  # dotted: "vm.recovered", "node.dead", "migration.done"
    subject: str = ""  # "vm/web-1", "node/n2"
    reason: str = ""  # the sentence: why this happened
    actor: str = ""  # "controller@n1", "agent@n2", "api"
    data: dict[str, str | int | float | bool | None] = {}


# How a component records an event: ``await say(kind, subject, reason)``. The one who says it
# (its actor) is bound in by whoever hands the component its ``say``.
Say = Callable[[str, str, str], Awaitable[None]]
# How a component records many events at once, in order (a cycle's decisions: a few writes,
# not one each): ``await say_all([(kind, subject, reason), ...])``.
SayAll = Callable[[Sequence[tuple[str, str, str]]], Awaitable[None]]
