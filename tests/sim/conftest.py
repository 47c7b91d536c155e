from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.sim.cluster import SimCluster


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[SimCluster]:
    """A sim cluster on a manual clock: its time moves only as the test waits."""
    c = SimCluster(tmp_path)
    try:
        yield c
    finally:
        await c.stop()
