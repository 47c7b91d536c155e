"""Fixtures shared by every test directory (a directory's own conftest may override one)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from hvcluster.store.memory_store import MemoryStore


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    """An empty in-memory store, closed after the test."""
    s = MemoryStore()
    try:
        yield s
    finally:
        await s.close()
