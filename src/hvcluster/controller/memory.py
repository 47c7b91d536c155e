"""What the controller remembers between cycles of one leadership term: facts etcd does not
hold, each of which errs on the safe side when lost (a new leader starts every clock anew)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hvcluster.store.state import ClusterState


@dataclass
class ControllerMemory:
    leader_since: float
    gone_since: dict[str, float] = field(default_factory=dict)  # node -> first seen not alive
    pending_since: dict[str, float] = field(default_factory=dict)  # vm -> first seen wanting a node
    fenced: set[str] = field(default_factory=set)  # nodes a fence agent confirmed off
    fencing: set[str] = field(default_factory=set)  # fence commands under way
    reported: dict[str, str] = field(default_factory=dict)  # subject -> last reason said
    corrupt_reported: set[str] = field(default_factory=set)  # keys already reported

    def observe(self, state: ClusterState, now: float) -> None:
        """Update the clocks from what this cycle read."""
        alive = state.alive.present
        for name in state.nodes.present:
            if name in alive:
                self.gone_since.pop(name, None)
                self.fenced.discard(name)
            else:
                # A node already absent when we became leader is timed from then: later,
                # never earlier, than the truth.
                self.gone_since.setdefault(name, max(now, self.leader_since))
        for name in list(self.gone_since):
            if name not in state.nodes.present:
                del self.gone_since[name]
        live_nodes = {n for n in state.nodes.items if n in alive}
        for name, vm in state.vms.items.items():
            placed = state.placements.items.get(name)
            wants = vm.value.desired_state == "running" and (
                placed is None or placed.value.node not in live_nodes
            )
            if wants:
                self.pending_since.setdefault(name, now)
            else:
                self.pending_since.pop(name, None)

    def changed(self, subject: str, reason: str) -> bool:
        """True the first time ``reason`` is said about ``subject`` (so waits are not
        repeated as events every cycle)."""
        if self.reported.get(subject) == reason:
            return False
        self.reported[subject] = reason
        return True
