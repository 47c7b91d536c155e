"""``hvc migration show ID``: a migration's record or a storage move's, for people and
scripts; an unknown id is exit code 3."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from hvcluster.cli.output import ExitCode
from hvcluster.models.base import encode
from hvcluster.models.migration import Migration, MigrationKind, MigrationState, Progress
from tests.cli.conftest import KEYS, ApiServer

pytestmark = pytest.mark.timeout(60)


def test_migration_show(hvc: Any, server: ApiServer) -> None:
    assert server.store is not None
    now = time.time()
    live = Migration(
        id="m-show-1",
        vm="web-9",
        source="n1",
        target="n2",
        state=MigrationState.DONE,
        created=now - 5,
        updated=now,
        downtime_ms=42.0,
        total_ms=1800.0,
        progress=Progress(
            bytes_transferred=1024,
            bytes_total=2048,
            passes=7,
            dirty_rate_mib_s=48.6,
            expected_downtime_ms=290,
            cpu_throttle_pct=40,
        ),
        reason="moved for maintenance",
        requested_by="api",
    )
    moving = Migration(
        id="s-show-1",
        vm="web-9",
        source="n1",
        kind=MigrationKind.STORAGE,
        state=MigrationState.TRANSFERRING,
        created=now,
        updated=now,
        volume="csv2",
    )
    server.run(server.store.put(KEYS.migration(live.id), encode(live)))
    server.run(server.store.put(KEYS.storage_move(moving.id), encode(moving)))

    shown = hvc("migration", "show", "m-show-1")
    assert shown.exit_code == 0, shown.output
    for words in ("web-9", "done", "n2", "42 ms", "1800 ms", "1024 of 2048 bytes", "maintenance"):
        assert words in shown.output, words
    # a live migration's load, as QEMU reckoned it
    for words in ("pass 7", "dirtying 49 MiB/s", "expected downtime 290 ms", "throttled 40 %"):
        assert words in " ".join(shown.output.split()), words
    record = json.loads(hvc("migration", "show", "m-show-1", "--json").output)
    assert (record["id"], record["downtime_ms"], record["target"]) == ("m-show-1", 42.0, "n2")

    storage = json.loads(hvc("migration", "show", "s-show-1", "--json").output)
    assert (storage["kind"], storage["volume"], storage["state"]) == (
        "storage",
        "csv2",
        "transferring",
    )
    assert "csv2" in hvc("migration", "show", "s-show-1").output

    missing = hvc("migration", "show", "nope")
    assert missing.exit_code == ExitCode.NOT_FOUND, missing.output
