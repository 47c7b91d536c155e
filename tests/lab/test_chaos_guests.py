"""How the chaos checker tells a live migration's two processes from a double run: it asks
each QEMU holding the disk whether it runs its guest (``query-status`` on its second
monitor), twice in turn. Here the monitors are fakes on real unix sockets, each answering
from a script, so every order of answers around a switchover can be played."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hvcluster.drivers.runtime import OBSERVE_SOCKET
from hvcluster.lab.hostview import VMProcess, runs_guest
from hvcluster.lab.invariants import running_guests

pytestmark = pytest.mark.timeout(30)
Make = Callable[..., VMProcess]  # (node, statuses, incoming=False) -> a fake QEMU process


class FakeMonitor:
    """A QMP monitor at ``<dir>/qmp2.sock`` answering ``query-status`` with the next of
    ``statuses`` (the last one once they run out); an event before each answer, as QEMU
    may send one at any time."""

    def __init__(self, vm_dir: Path, statuses: list[str]) -> None:
        self.statuses = list(statuses)
        self.asked = 0
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(vm_dir / OBSERVE_SOCKET))
        self.server.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as f:
                f.write(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
                f.flush()
                for line in f:
                    command = json.loads(line)["execute"]
                    f.write(b'{"event": "RTC_CHANGE", "data": {}}\r\n')
                    answer: dict[str, object] = {}
                    if command == "query-status":
                        status = self.statuses[min(self.asked, len(self.statuses) - 1)]
                        self.asked += 1
                        answer = {"running": status == "running", "status": status}
                    f.write(json.dumps({"return": answer}).encode() + b"\r\n")
                    f.flush()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def qemus(tmp_path: Path) -> Iterator[Make]:
    made: list[FakeMonitor] = []

    def make(name: str, statuses: list[str], incoming: bool = False) -> VMProcess:
        d = tmp_path / name
        d.mkdir()
        if statuses:
            made.append(FakeMonitor(d, statuses))
        return VMProcess(pid=len(made) + 100, node=name, vm="web", dir=str(d), incoming=incoming)

    yield make
    for m in made:
        m.close()


def test_a_waiting_target_is_not_a_second_run(qemus: Make) -> None:
    source = qemus("n1", ["running"])
    target = qemus("n2", ["inmigrate"], incoming=True)
    assert runs_guest(source) is True and runs_guest(target) is False
    assert running_guests([source, target]) == [source]


def test_a_finished_source_is_not_a_second_run(qemus: Make) -> None:
    source = qemus("n1", ["postmigrate"])
    target = qemus("n2", ["running"], incoming=True)
    assert running_guests([source, target]) == [target]


def test_the_switchover_between_two_looks_is_not_a_double_run(qemus: Make) -> None:
    """The source said running before the switchover, the target after it: asked again,
    the source has stopped its guest."""
    source = qemus("n1", ["running", "postmigrate"])
    target = qemus("n2", ["running"], incoming=True)
    assert running_guests([source, target]) == [target]


def test_a_source_and_a_target_both_running_are_a_double_run(qemus: Make) -> None:
    source = qemus("n1", ["running"])
    target = qemus("n2", ["running"], incoming=True)
    assert running_guests([source, target]) == [source, target]


def test_a_qemu_that_cannot_be_asked_counts_as_running(qemus: Make) -> None:
    """No second monitor (a QEMU started by someone else), or no answer: it may run."""
    mute = qemus("n1", [])
    target = qemus("n2", ["running"], incoming=True)
    assert runs_guest(mute) is None
    assert running_guests([mute, target]) == [mute, target]


def test_a_frozen_process_runs_nothing(qemus: Make) -> None:
    source = qemus("n1", ["running"])
    frozen = VMProcess(pid=1, node="n2", vm="web", dir=source.dir, stopped=True)
    assert runs_guest(frozen) is False
