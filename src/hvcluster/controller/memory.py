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
            elif name not in self.gone_since:
                self.gone_since[name] = self._first_seen_gone(state, name, now)
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

    def _first_seen_gone(self, state: ClusterState, name: str, now: float) -> float:
        """A node already absent when we became leader is timed from then: later, never
        earlier, than the truth. Except one that an earlier controller already declared dead
        in this outage (a failure recorded after its last registration): its VMs were free
        to reclaim then, and it is no part of a mass failure happening now."""
        stored = state.nodes.items.get(name)
        if stored is not None:
            node = stored.value
            if node.failures and node.failures[-1] >= node.registered_at:
                return min(node.failures[-1], now)
        return max(now, self.leader_since)

    def changed(self, subject: str, reason: str) -> bool:
        """True the first time ``reason`` is said about ``subject`` (so waits are not
        repeated as events every cycle)."""
        if self.reported.get(subject) == reason:
            return False
        self.reported[subject] = reason
        return True
