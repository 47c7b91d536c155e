"""Fixtures shared by every test directory (a directory's own conftest may override one)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from pathlib import Path

import pytest

from hvcluster.store.memory_store import MemoryStore
from tests import once_per_change

HERE = Path(__file__).parent
# The directories whose tests may share the cores with other tests (scripts/test runs those
# marked ``parallel`` on several workers at once): in-process, on memory stores and manual
# clocks, or on real time with margins that a busy core does not eat. A test there whose
# bounds are real time (an agent that must answer within seconds) is marked ``alone``.
# ``hostinstall``: the host install in a chroot waits a minute for what it starts and
# times nothing tighter; on the workers its ~50 s overlap the in-process tests.
PARALLEL_DIRS = frozenset(
    {
        "models",
        "scheduler",
        "controller",
        "sim",
        "scenarios",
        "api",
        "cli",
        "validate",
        "web",
        "hostinstall",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``parallel`` every test of :data:`PARALLEL_DIRS` not marked ``alone``."""
    for item in items:
        try:
            top = item.path.relative_to(HERE).parts[0]
        except ValueError:
            continue
        if top in PARALLEL_DIRS and item.get_closest_marker("alone") is None:
            item.add_marker(pytest.mark.parallel)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a ``once_per_change`` test that passed on this code (``tests/once_per_change.py``)."""
    if item.get_closest_marker(once_per_change.MARKER) is not None:
        key = item.stash[_CHANGE_HASH] = once_per_change.change_hash(item.path)
        reason = once_per_change.passed_before(item.nodeid, key)
        if reason is not None:
            pytest.skip(reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Stamp a ``once_per_change`` test whose call passed once its teardown has too."""
    report = yield
    if item.get_closest_marker(once_per_change.MARKER) is not None:
        if report.when == "call":
            item.stash[_CALL_PASSED] = report.passed
        elif report.when == "teardown" and report.passed and item.stash.get(_CALL_PASSED, False):
            once_per_change.record_pass(item.nodeid, item.stash[_CHANGE_HASH])
    return report


_CALL_PASSED = pytest.StashKey[bool]()
_CHANGE_HASH = pytest.StashKey[str]()


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    """An empty in-memory store, closed after the test."""
    s = MemoryStore()
    try:
        yield s
    finally:
        await s.close()
