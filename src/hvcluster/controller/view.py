"""Build the scheduler's frozen snapshot from what the controller read and remembers."""

from __future__ import annotations

from hvcluster.controller.notes import ControllerNotes
from hvcluster.models.lifecycle import VMState
from hvcluster.models.migration import Migration
from hvcluster.models.vm import same_vm
from hvcluster.scheduler.snapshot import ClusterSnapshot, NodeView, VMView
from hvcluster.store.reads import Decoded
from hvcluster.store.state import ClusterState


def build_snapshot(
    state: ClusterState,
    notes: ControllerNotes,
    now: float,
    migrations: Decoded[Migration] | None = None,
) -> ClusterSnapshot:
    """The snapshot of ``state``; with ``migrations``, each VM with one under way is marked
    migrating (and its target reserved for it: see :class:`~.snapshot.VMView`)."""
    moving: dict[str, str | None] = {}
    for record in migrations.items.values() if migrations is not None else ():
        rec = record.value
        if rec.active:
            moving[rec.vm] = moving.get(rec.vm) or rec.target or None
    nodes = {}
    for name, stored_node in state.nodes.items.items():
        node = stored_node.value
        nodes[name] = NodeView(
            node=node,
            alive=name in state.alive.present,
            gone_since=notes.gone_since.get(name),
            fenced=name in notes.fenced,
            expired=name in notes.expired,
            failures=node.failures,
            quarantined_until=node.quarantined_until,
        )
    vms = {}
    skip = state.unreadable_vms
    for name, stored in state.vms.items.items():
        if name in skip:
            continue  # never decide on a VM whose placement we cannot read
        spec = stored.value
        placed = state.placements.items.get(name)
        status = state.statuses.items.get(name)
        placement = placed.value if placed else None
        st = status.value if status else None
        # A placement or status of an older VM of this name (deleted, perhaps still
        # stopping) is not this VM's: ignored, but its epoch stays below any new one.
        floor = max(placement.epoch if placement else 0, st.epoch if st else 0)
        if placement is not None and not same_vm(spec, placement.uid):
            placement = None
        if st is not None and not same_vm(spec, st.uid):
            st = None
        left_failed = st is not None and st.left_failed and st.state is VMState.FAILED
        vms[name] = VMView(
            spec=spec,
            placement=placement,
            status=st,
            failovers=placement.failovers if placement else (),
            failed_reason=st.last_error if left_failed and st is not None else "",
            pending_since=notes.pending_since.get(name),
            epoch_floor=floor,
            migrating=name in moving,
            migrating_to=moving.get(name),
        )
    return ClusterSnapshot(now=now, config=state.config, nodes=nodes, vms=vms)
