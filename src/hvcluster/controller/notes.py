"""The controller's notes: what it keeps between cycles, facts etcd does not hold, each of
which errs on the safe side when lost. (Named notes, not memory: "memory" in this project
is a VM's RAM.)

Every agent's controller observes nodes and their leases, leader or not, so that a newly
elected leader already knows when a node's key went and whether its lease ran out: the
failover of the controller's own host is then as fast as any other. What an agent never saw
(it started after a node went) is timed from its first look: later, never earlier, than the
truth."""

from __future__ import annotations

from dataclasses import dataclass, field

from hvcluster.store.state import ClusterState

# A key counts as expired, not revoked, only if it went no earlier than its lease was due
# by our last reading, and that reading was this recent. etcd reports whole seconds, rounded
# down, so "due" is never later than the true end. Then even a revoke mistaken for an expiry
# (one that falls between the due time and the true end) comes after the node went
# TTL - 1 s > fence_after without a keepalive reaching etcd: its watchdog fired already.
OBSERVATION_FRESH_S = 1.5


@dataclass
class ControllerNotes:
    started: float  # when this controller began to observe
    gone_since: dict[str, float] = field(default_factory=dict)  # node -> first seen not alive
    pending_since: dict[str, float] = field(default_factory=dict)  # vm -> first seen wanting a node
    fenced: set[str] = field(default_factory=set)  # nodes a fence agent confirmed off
    fencing: set[str] = field(default_factory=set)  # fence commands under way
    reported: dict[str, str] = field(default_factory=dict)  # subject -> last reason said
    corrupt_reported: set[str] = field(default_factory=set)  # keys already reported
    # node -> when its lease would run out, as last observed (TimeToLive) while it lived
    lease_expiry: dict[str, tuple[float, float]] = field(default_factory=dict)  # (seen, due)
    expired: set[str] = field(default_factory=set)  # gone nodes whose lease ran out

    def observe(self, state: ClusterState, now: float) -> None:
        """Update the clocks from what this cycle read."""
        self.observe_nodes(state, now)
        self.observe_vms(state, now)

    def observe_nodes(self, state: ClusterState, now: float) -> None:
        """Only ``state.nodes`` and ``state.alive`` are read (followers read no more)."""
        alive = state.alive.present
        for name in state.nodes.present:
            if name in alive:
                self.gone_since.pop(name, None)
                self.fenced.discard(name)
                self.expired.discard(name)
            elif name not in self.gone_since:
                self.gone_since[name] = self._first_seen_gone(state, name, now)
                # Gone no earlier than its lease was due to run out: it expired, it was
                # not revoked (etcd counts TTLs in whole seconds, hence the tolerance).
                seen = self.lease_expiry.pop(name, None)
                if seen is not None and self.ran_out(seen[0], seen[1], now):
                    self.expired.add(name)
        for name in list(self.gone_since):
            if name not in state.nodes.present:
                del self.gone_since[name]

    def observe_vms(self, state: ClusterState, now: float) -> None:
        alive = state.alive.present
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
        return max(now, self.started)

    def saw_lease(self, node: str, remaining_s: float, now: float) -> None:
        """Record a TimeToLive answer for a live node's lease."""
        self.lease_expiry[node] = (now, now + remaining_s)

    @staticmethod
    def ran_out(seen_at: float, due: float, gone_at: float) -> bool:
        """Did a lease whose TTL we read at ``seen_at`` (due to run out at ``due``) expire,
        rather than get revoked, if its key was gone at ``gone_at``? Yes when we read it
        recently and it went no earlier than due: a keepalive after our reading would have
        pushed its end a whole TTL further."""
        return gone_at - seen_at <= OBSERVATION_FRESH_S and gone_at >= due

    def changed(self, subject: str, reason: str) -> bool:
        """True the first time ``reason`` is said about ``subject`` (so waits are not
        repeated as events every cycle)."""
        if self.reported.get(subject) == reason:
            return False
        self.reported[subject] = reason
        return True
