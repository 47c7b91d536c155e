"""What the controller remembers: when a lease ran out rather than being revoked."""

from __future__ import annotations

from hvcluster.controller.notes import ControllerNotes


def test_a_lease_read_recently_and_gone_when_due_ran_out() -> None:
    # Read at t=11 with 1 s left (due 12); gone at 12.1: expired.
    assert ControllerNotes.ran_out(seen_at=11.0, due=12.0, gone_at=12.1)
    assert not ControllerNotes.ran_out(seen_at=11.0, due=12.0, gone_at=11.9)
    # etcd floors TTLs: a lease may go up to a second after "due".
    assert ControllerNotes.ran_out(seen_at=11.5, due=12.0, gone_at=12.9)


def test_a_key_gone_well_before_its_lease_was_due_was_revoked() -> None:
    # A healthy node's lease reads 3 s left; its key vanishing 0.5 s later is a revoke (or a
    # deletion), and the node may still run its VMs.
    assert not ControllerNotes.ran_out(seen_at=10.0, due=13.0, gone_at=10.5)


def test_a_stale_reading_proves_nothing() -> None:
    # Last read long ago (a stalled controller, or no leader in etcd): no fast path.
    assert not ControllerNotes.ran_out(seen_at=10.0, due=11.0, gone_at=14.0)
