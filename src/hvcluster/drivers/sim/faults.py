"""Bugs on demand: a sim driver operation that raises an unexpected ``RuntimeError``, the way
a driver with a bug would (not a ``DriverError``, which callers expect and handle).

Used to show that one job's unexpected exception fails that job only: the migration or
storage-move worker logs it, fails the record with the reason and goes on, and the agent
keeps running its VMs. The fault is state of the driver (how many more calls break), so a
test can make an operation break every time (a record that would fail again on each try)
and clear it again."""

from __future__ import annotations

from dataclasses import dataclass

OPERATIONS = frozenset(
    {
        "start",
        "kill",
        "prepare_incoming",
        "migrate_out",
        "save",
        "restore",
        "resume",
        "discard",
        "move_disk",
    }
)


@dataclass
class Bug:
    message: str
    left: int | None  # calls that still break; None: every call
    hits: int = 0  # calls that broke so far


class SimBugs:
    """Which operation breaks for which VM, and how often it did."""

    def __init__(self) -> None:
        self.bugs: dict[tuple[str, str], Bug] = {}
        # VMs whose next save "succeeds" where only this host sees it (a volume mounted on
        # the source only, say): the file is not where the target will look for it
        self.unshared: set[str] = set()
        # VM -> the host its next incoming migration listens on instead of the one asked
        self.listen_elsewhere: dict[str, str] = {}
        # VM -> why its next resume fails (a driver error, not a bug)
        self.refuse_resume: dict[str, str] = {}
        # VM -> the host its next shared-nothing incoming migration serves its disks on
        self.disks_elsewhere: dict[str, str] = {}

    def add(self, operation: str, vm: str, message: str, times: int | None) -> Bug:
        if operation not in OPERATIONS:
            raise ValueError(f"no such sim operation {operation!r}: one of {sorted(OPERATIONS)}")
        bug = self.bugs[(operation, vm)] = Bug(message, times)
        return bug

    def clear(self, operation: str, vm: str) -> None:
        self.bugs.pop((operation, vm), None)

    def trip(self, operation: str, vm: str) -> None:
        """Raise the bug set for ``operation`` of ``vm``, if one is left."""
        bug = self.bugs.get((operation, vm))
        if bug is None or bug.left == 0:
            return
        if bug.left is not None:
            bug.left -= 1
        bug.hits += 1
        raise RuntimeError(f"{operation} of {vm}: {bug.message}")
