"""The chaos run's faults: random, reproducible from a seed, and always ones the cluster must
survive: one node or one etcd member at a time, each undone after its hold (the node started
again, continued or healed; the member started or continued), so that the cluster is brought
back before the next.

Each fault says whether it may move VMs (``moves``). Those that may not are the ones the
cluster must ride out without a failover: a stall or a cut shorter than half of
``fence_after``, a node cut from the other nodes only (it still reaches etcd), one etcd member
down (the rest keep quorum), a VM process killed (restarted where it is). A failover during
one of those is a false failover.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

KINDS = ("kill", "stop", "partition", "etcd", "vm")
# what undoes each lab fault once its hold is over ("" : nothing to undo)
UNDO = {
    "kill": "start",
    "kill-agent": "start",
    "stop": "cont",
    "delay": "",
    "partition": "heal",
    "etcd-kill": "etcd-start",
    "etcd-stop": "etcd-cont",
    "vm-kill": "",
}


@dataclass(frozen=True)
class Timing:
    """The cluster's timings the faults are sized against."""

    lease_ttl_s: float = 4.0
    fence_after_s: float = 3.0

    @property
    def short(self) -> float:
        """A stall or cut this long must change nothing."""
        return 0.4 * self.fence_after_s

    @property
    def long(self) -> float:
        """A stall or cut at least this long has fenced the node and expired its lease."""
        return max(self.lease_ttl_s, self.fence_after_s) + 1.0


@dataclass(frozen=True)
class Fault:
    kind: str  # one of KINDS
    action: str  # an 'hvc lab fault' action
    target: str  # node, etcd member or VM
    hold_s: float  # how long before it is undone
    moves: bool  # may it move VMs? (False: a failover during it is a false failover)
    source: str = "all"  # partition: cut from etcd, nodes or all

    @property
    def undo(self) -> str:
        return UNDO[self.action]

    def describe(self) -> str:
        what = f"{self.action} {self.target}"
        if self.action == "partition":
            what += f" --from {self.source}"
        if self.action == "delay":
            return f"{what} {self.hold_s * 1000:.0f} ms"
        return f"{what}, undone after {self.hold_s:.1f} s" if self.undo else what


def parse_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"--faults: use some of {','.join(KINDS)}, got {text!r}")
    return kinds


class Planner:
    """Draws faults from ``random.Random(seed)``: the same seed and the same lab (names) give
    the same faults in the same order."""

    def __init__(
        self,
        seed: int,
        kinds: tuple[str, ...],
        nodes: list[str],
        members: list[str],
        vms: list[str],
        timing: Timing,
        quiet: tuple[str, ...] = (),
    ) -> None:
        self.rng = random.Random(seed)
        self.kinds, self.nodes, self.members, self.vms = kinds, nodes, members, vms
        self.timing = timing
        # nodes that run no VM (a paused one): a fault there is drawn a quarter as often
        self.weights = [1 if n in quiet else 4 for n in nodes]

    def gap(self) -> float:
        """Seconds to wait, once the cluster is back, before the next fault."""
        return self.rng.uniform(0.5, 3.0)

    def next(self) -> Fault:
        kind = self.rng.choice(self.kinds)
        if kind == "etcd" and len(self.members) < 3:
            kind = "vm" if self.vms else "stop"  # one member: its loss is everyone's
        return getattr(self, f"_{kind}")()  # type: ignore[no-any-return]

    def _node(self) -> str:
        return self.rng.choices(self.nodes, self.weights)[0]

    def _kill(self) -> Fault:
        node = self._node()
        if self.rng.random() < 0.6:  # a host crash, started again after a while
            return Fault("kill", "kill", node, self.rng.uniform(1.0, 5.0), True)
        return Fault("kill", "kill-agent", node, self.rng.uniform(0.0, 0.5), True)

    def _stop(self) -> Fault:
        node, t = self._node(), self.timing
        if self.rng.random() < 0.5:  # a short stall: nothing may happen
            return Fault("stop", "delay", node, self.rng.uniform(0.2, 1.0) * t.short, False)
        return Fault("stop", "stop", node, self.rng.uniform(t.long, t.long + 3.0), True)

    def _partition(self) -> Fault:
        node, t = self._node(), self.timing
        source = self.rng.choice(("all", "etcd", "nodes"))
        if source == "nodes":  # it still reaches etcd: nothing may happen
            return Fault("partition", "partition", node, self.rng.uniform(1.0, 5.0), False, source)
        if self.rng.random() < 0.4:
            hold = self.rng.uniform(0.2, 1.0) * t.short
            return Fault("partition", "partition", node, hold, False, source)
        hold = self.rng.uniform(t.long, t.long + 3.0)
        return Fault("partition", "partition", node, hold, True, source)

    def _etcd(self) -> Fault:
        member = self.rng.choice(self.members)
        if self.rng.random() < 0.5:
            return Fault("etcd", "etcd-kill", member, self.rng.uniform(1.0, 6.0), False)
        return Fault("etcd", "etcd-stop", member, self.rng.uniform(0.5, 4.0), False)

    def _vm(self) -> Fault:
        if not self.vms:
            return self._kill()
        return Fault("vm", "vm-kill", self.rng.choice(self.vms), 0.0, False)
