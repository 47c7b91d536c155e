"""Quick migration's saved state, on a volume both nodes see (never a node's own run dir: on
real hosts the target could not read it, and the VM would boot cold on the target).

* controller, picking the target: only a node sharing a volume with the source; the record's
  ``state_file`` names it (``VOLUME:.hvc-migration-state/<vm>-<id>.state``; the VM's own
  disk volume first, see :func:`hvcluster.models.migration.state_volume`);
* target, on ``preparing``: it sees that volume and makes the directory, then
  ``state_prepared``; if it cannot, the record fails with the reason;
* source, on ``state_prepared``: ``transferring``, saves the state there, writes
  ``saved_path``, and waits (the guest is paused) for the target's check;
* target, on ``saved_path``: reads the file; ``state_verified`` if it can, else the record
  fails with the reason (the source runs its paused copy again);
* source, on ``state_verified``: the flip, as for a live migration. The target restores the
  VM from the file and deletes it; after a failure the source deletes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from hvcluster.agent.migration_base import MigrationBase
from hvcluster.models.errors import DriverError
from hvcluster.models.lifecycle import MigrationState
from hvcluster.models.migration import Migration, MigrationKind, split_state_file
from hvcluster.store.migrations import change_migration, change_record
from hvcluster.store.reads import read_one
from hvcluster.tasks import wait_event

log = logging.getLogger(__name__)

_M = MigrationState
VERIFY_S = 30.0  # the source waits this long (its guest paused) for the target's check
VERIFY_POLL_S = 0.5  # ... re-reading the record this often (the watch wakes it sooner)


class QuickState(MigrationBase):
    def _state_path(self, state_file: str) -> Path:
        """This host's path of a record's ``state_file``. Raises DriverError if it does not
        see the volume."""
        volume, relative = split_state_file(state_file)
        if not volume or not relative:
            raise DriverError("no volume was chosen for the saved state")
        root = self.agent.disks.mounts.get(volume)
        if root is None:
            raise DriverError(f"{self.me} does not see volume {volume!r}")
        return Path(root) / relative

    def _state_changed(self, rec: Migration) -> None:
        """From the watch: wake a source waiting for the target's check of ``rec``."""
        if rec.kind is MigrationKind.QUICK and rec.source == self.me:
            waiting = self.verify_waits.get(rec.id)
            if waiting is not None and (rec.state_verified or not rec.active):
                waiting.set()

    # --- target ----------------------------------------------------------------------
    async def _prepare_state(self, rec: Migration) -> None:
        """Ready to take the state: this host sees its volume, the directory is there."""
        try:
            path = self._state_path(rec.state_file)
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        except (DriverError, OSError) as e:
            await self._fail(rec, f"target {self.me} cannot take the saved state: {e}")
            self.agent.incoming.discard(rec.vm)
            return

        if not await self._while_preparing(rec, "state_prepared", True):
            self.agent.incoming.discard(rec.vm)  # cancelled or failed meanwhile

    async def _verify_state(self, rec: Migration) -> None:
        """The source saved the state: check this host can read it before the flip."""
        try:
            path = self._state_path(rec.saved_path)
            size = await asyncio.to_thread(_readable_size, path)
        except (DriverError, OSError) as e:
            why = f"target {self.me} cannot read the saved state {rec.saved_path}: {e}"
            await self._fail(rec, why)
            return
        log.info("migration %s: saved state %s readable here (%d bytes)", rec.id, path, size)

        def verified(cur: Migration) -> Migration | None:
            if cur.state is not _M.TRANSFERRING or cur.saved_path != rec.saved_path:
                return None
            return None if cur.state_verified else cur.model_copy(update={"state_verified": True})

        await change_migration(self.store, self.keys, rec.id, verified, now=self.agent.clock.wall())

    # --- source ----------------------------------------------------------------------
    async def _saved_and_verified(self, rec: Migration) -> tuple[Migration, int]:
        """``saved_path`` written into ``rec``, then the target's check waited for: the
        record and its revision once verified (the flip compares them). Raises NotVerified
        (the record failed, timed out here, or was cancelled)."""

        def saved(cur: Migration) -> Migration | None:
            if cur.state is not _M.TRANSFERRING:
                return None
            return cur.model_copy(update={"saved_path": cur.state_file})

        written = await change_record(
            self.store, self.keys, self.keys.migration(rec.id), saved, now=self.agent.clock.wall()
        )
        if written is None:
            raise NotVerified("the migration ended while the state was saved")
        waiting = self.verify_waits.setdefault(rec.id, asyncio.Event())
        clock = self.agent.clock
        deadline = clock.now() + VERIFY_S
        try:
            while True:
                found = await read_one(self.store, self.keys.migration(rec.id), Migration)
                if found is None or not found.value.active:
                    raise NotVerified("the migration ended while the target checked the state")
                if found.value.state_verified:
                    return found.value, found.mod_revision
                left = deadline - clock.now()
                if left <= 0:
                    why = f"target {rec.target} did not confirm within {VERIFY_S:.0f} s that it "
                    why += f"can read the saved state {rec.state_file}"
                    await self._fail(rec, why)
                    raise NotVerified(why)
                waiting.clear()
                await wait_event(waiting, min(left, VERIFY_POLL_S), clock.sleep)
        finally:
            self.verify_waits.pop(rec.id, None)

    async def _drop_state(self, rec: Migration) -> None:
        """A failed quick migration: its state file, if any, is of no use now."""
        if rec.kind is not MigrationKind.QUICK or not rec.state_file:
            return
        with contextlib.suppress(DriverError, OSError):
            path = self._state_path(rec.state_file)
            await asyncio.to_thread(path.unlink, missing_ok=True)


class NotVerified(Exception):
    """The target did not confirm it can read the saved state (the record says why)."""


def _readable_size(path: Path) -> int:
    """The size of ``path`` once a byte of it was read. Raises OSError (empty: too)."""
    with path.open("rb") as f:
        if not f.read(1):
            raise OSError(f"{path} is empty")
        return path.stat().st_size
