"""The leader's care of records that grow with use: finished migrations and storage moves
(by age and by count, :mod:`hvcluster.store.retention`) and the cluster log (by count and
by age, :meth:`hvcluster.store.events.EventLog.trim`), as the cluster config says
(``migration_retention_s``, ``max_migration_records``, ``event_retention``,
``event_max_age_s``).

Migration records are read by every coordinator cycle anyway, so they are judged every
cycle; storage moves and the log need a read of their own and are swept every
:data:`SWEEP_EVERY_S`. Records a drain in progress reads (its own, failed or cancelled: it
decides fallbacks from them) are spared from the count. Each sweep that removed records
says so in one event.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

from hvcluster.models.config import ClusterConfig
from hvcluster.models.errors import StoreError
from hvcluster.models.event import Say
from hvcluster.models.lifecycle import NodeAdminState
from hvcluster.models.migration import Migration
from hvcluster.models.node import Node
from hvcluster.store.base import Store
from hvcluster.store.events import EventLog
from hvcluster.store.keys import Keys
from hvcluster.store.migrations import read_moves
from hvcluster.store.reads import Decoded, read_kind
from hvcluster.store.retention import Prunable, prune, to_prune
from hvcluster.store.state import read_config

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 60.0


class Retention:
    def __init__(self, store: Store, keys: Keys, say: Say, clock: Callable[[], float]) -> None:
        self.store, self.keys, self.say, self.clock = store, keys, say, clock
        self.swept_at = -math.inf

    async def sweep(self, migrations: Decoded[Migration]) -> None:
        """Prune what the config says goes: migrations now, the rest if due. Housekeeping
        never fails the caller's cycle: a store error is logged and the next sweep retries."""
        try:
            await self._sweep(migrations)
        except StoreError as e:
            log.warning("pruning old records failed (the next cycle retries): %s", e)

    async def _sweep(self, migrations: Decoded[Migration]) -> None:
        config, _ = await read_config(self.store, self.keys)
        now = self.clock()
        await self._records(
            "migration", migrations, lambda rec: self.keys.migration(rec.id), config, now
        )
        if now - self.swept_at < SWEEP_EVERY_S:
            return
        self.swept_at = now
        moves = await read_moves(self.store, self.keys)
        await self._records(
            "storage move", moves, lambda rec: self.keys.storage_move(rec.id), config, now
        )
        events = EventLog(self.store, self.keys, retention=config.event_retention)
        trimmed = await events.trim(config.event_max_age_s, now)
        if trimmed:
            log.info("trimmed %d events from the cluster log", trimmed)

    async def _records(
        self,
        what: str,
        found: Decoded[Migration],
        key_of: Callable[[Migration], str],
        config: ClusterConfig,
        now: float,
    ) -> None:
        records = [(s.value, s.mod_revision) for s in found.items.values()]
        limit, age = config.max_migration_records, config.migration_retention_s
        draining: set[str] = set()
        if sum(not rec.active for rec, _ in records) > limit:
            draining = await self._draining()

        def read_by_a_drain(rec: Migration) -> bool:
            return rec.source in draining and rec.requested_by == f"drain:{rec.source}"

        victims = to_prune(records, now, age, limit, read_by_a_drain)
        gone = await prune(self.store, self.keys, key_of, victims)
        if gone:
            left = len(victims) - gone
            later = f"; {left} changed since read, left for the next sweep" if left else ""
            await self.say(
                f"{what.replace(' ', '_')}.pruned",
                "",
                f"pruned {gone} finished {what} records ({_why(victims)}){later}",
            )

    async def _draining(self) -> set[str]:
        nodes = await read_kind(self.store, self.keys, "nodes", Node)
        return {
            name
            for name, stored in nodes.items.items()
            if stored.value.admin_state is NodeAdminState.DRAINING
        }


def _why(victims: Sequence[Prunable]) -> str:
    counts: dict[str, int] = {}
    for v in victims:
        counts[v.why] = counts.get(v.why, 0) + 1
    return ", ".join(f"{n} {why}" for why, n in counts.items())
