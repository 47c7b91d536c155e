"""The node watchdog, as a real process killing real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hvcluster.watchdog.node import SOCKET_NAME, WatchdogFeeder, vm_pids
from tests.waiting import wait_for_sync

pytestmark = pytest.mark.timeout(30)

FENCE_AFTER = 1.0


def _wait_for(predicate: Callable[[], object], timeout: float) -> bool:
    wait_for_sync(predicate, timeout, "the watchdog", every=0.02)
    return True


def _held(feeder: WatchdogFeeder, answers: int) -> float:
    """The deadline the watchdog says it holds in its ``answers``-th answer from now
    (it answers every feed, in order): positive evidence it has taken those feeds."""
    before = feeder.sock.gettimeout()
    feeder.sock.settimeout(5)
    try:
        held = [feeder.sock.recv(64) for _ in range(answers)]
    finally:
        feeder.sock.settimeout(before)
    assert held[-1].startswith(b"ack "), held
    return float(held[-1].split()[1])


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def fake_vms(run_dir: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = []
    for name in ("vm-a", "vm-b"):
        p = subprocess.Popen(["sleep", "60"], start_new_session=True)
        (run_dir / "vms" / name).mkdir(parents=True)
        (run_dir / "vms" / name / "pid").write_text(f"{p.pid}\n")
        procs.append(p)
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.fixture
def watchdog(run_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    run_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hvcluster.watchdog",
            "--run-dir",
            str(run_dir),
            "--fence-after",
            str(FENCE_AFTER),
        ],
        stderr=subprocess.PIPE,
    )
    try:
        assert _wait_for(lambda: (run_dir / SOCKET_NAME).exists(), 10), "watchdog did not start"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_fed_watchdog_leaves_vms_alone_then_kills_all_when_unfed(
    run_dir: Path, fake_vms: list[subprocess.Popen[bytes]], watchdog: subprocess.Popen[bytes]
) -> None:
    feeder = WatchdogFeeder(run_dir)
    end = time.monotonic() + 2.5 * FENCE_AFTER
    while time.monotonic() < end:
        assert feeder.feed(time.monotonic() + FENCE_AFTER)
        time.sleep(0.2)
    assert all(_alive(p) for p in fake_vms), "a fed watchdog killed a VM"

    last_deadline = time.monotonic() + FENCE_AFTER
    feeder.feed(last_deadline)
    assert _wait_for(lambda: not any(_alive(p) for p in fake_vms), FENCE_AFTER + 2)
    killed_at = time.monotonic()
    # Never before the deadline it was given.
    assert killed_at >= last_deadline
    for p in fake_vms:
        assert p.wait() == -signal.SIGKILL
    log = (run_dir / "watchdog.log").read_text()
    assert "killed vm-a" in log
    feeder.close()


def test_unfed_from_the_start_kills(
    run_dir: Path, fake_vms: list[subprocess.Popen[bytes]], watchdog: subprocess.Popen[bytes]
) -> None:
    assert _wait_for(lambda: not any(_alive(p) for p in fake_vms), FENCE_AFTER + 2)


def test_a_deadline_never_moves_back_and_garbage_is_ignored(
    run_dir: Path, fake_vms: list[subprocess.Popen[bytes]], watchdog: subprocess.Popen[bytes]
) -> None:
    feeder = WatchdogFeeder(run_dir)
    first = time.monotonic() + 3 * FENCE_AFTER
    feeder.feed(first)
    feeder.sock.sendto(b"feed soon", feeder.path)
    feeder.sock.sendto(b"hello", feeder.path)
    feeder.feed(time.monotonic() - 100)  # an old deadline does not cut the current one short
    # the watchdog took both feeds and holds the first deadline, then checked the VMs
    assert _held(feeder, 2) == pytest.approx(first, abs=1e-5)
    assert all(_alive(p) for p in fake_vms)
    assert _alive(watchdog)
    feeder.close()


def test_vm_pids_skips_garbage_and_dead(run_dir: Path) -> None:
    (run_dir / "vms" / "x").mkdir(parents=True)
    (run_dir / "vms" / "x" / "pid").write_text("not a pid")
    p = subprocess.Popen(["true"])
    p.wait()
    (run_dir / "vms" / "y").mkdir(parents=True)
    (run_dir / "vms" / "y" / "pid").write_text(str(p.pid))
    (run_dir / "vms" / "z").mkdir(parents=True)
    (run_dir / "vms" / "z" / "pid").write_text(str(os.getpid()))
    assert vm_pids(run_dir) == [("z", os.getpid())]
    # A pid recorded with another process's start time is a recycled pid: never killed.
    (run_dir / "vms" / "z" / "pid.start").write_text("1")
    assert vm_pids(run_dir) == []


def test_feeder_without_a_watchdog_does_not_raise(tmp_path: Path) -> None:
    feeder = WatchdogFeeder(tmp_path)
    assert feeder.feed(time.monotonic() + 1) is False
    feeder.close()


def test_the_watchdog_acknowledges_feeding_and_silence_is_noticed(
    run_dir: Path, watchdog: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    feeder = WatchdogFeeder(run_dir)
    try:
        assert feeder.acknowledgement(grace=0.5).ok is None  # nothing fed, nothing to judge
        assert feeder.feed(time.monotonic() + 5 * FENCE_AFTER)
        assert _wait_for(lambda: feeder.acknowledgement(grace=0.5).ok is True, 5)
        # A hung watchdog: feeds still go out, answers do not come.
        watchdog.send_signal(signal.SIGSTOP)
        try:
            feeder.feed(time.monotonic() + 5 * FENCE_AFTER)

            def silent() -> bool:
                return feeder.acknowledgement(grace=0.5).ok is False

            assert _wait_for(silent, 5)
            ack = feeder.acknowledgement(grace=0.5)
            assert ack.problem == f"the watchdog at {run_dir / SOCKET_NAME} does not answer"
            assert ack.silent_since is not None
        finally:
            watchdog.send_signal(signal.SIGCONT)
        feeder.feed(time.monotonic() + 5 * FENCE_AFTER)
        assert _wait_for(lambda: feeder.acknowledgement(grace=0.5).ok is True, 5)
    finally:
        feeder.close()
    # A feeder of another run dir reaches no watchdog: said at once.
    elsewhere = WatchdogFeeder(tmp_path / "other")
    try:
        assert not elsewhere.feed(time.monotonic() + FENCE_AFTER)
        assert elsewhere.acknowledgement(grace=10).ok is None  # may be starting: not yet
        ack = elsewhere.acknowledgement(grace=0)
        assert ack.ok is False and "no watchdog listens at" in ack.problem
    finally:
        elsewhere.close()


def test_a_stopped_watchdog_fences_its_vms_at_the_deadline_it_holds(
    run_dir: Path, fake_vms: list[subprocess.Popen[bytes]], watchdog: subprocess.Popen[bytes]
) -> None:
    """SIGTERM while VMs run: no exit that leaves them unguarded (the cluster would start them
    elsewhere once the lease expires), no kill before the deadline, no more feeds taken."""
    feeder = WatchdogFeeder(run_dir)
    deadline = time.monotonic() + 2 * FENCE_AFTER
    feeder.feed(deadline)
    assert _held(feeder, 1) == pytest.approx(deadline, abs=1e-5)
    watchdog.send_signal(signal.SIGTERM)
    log = run_dir / "watchdog.log"
    _wait_for(lambda: "asked to stop while VMs run" in log.read_text(), 2)
    feeder.feed(deadline + 30)  # taken no more: the fence stays at the deadline held
    assert _wait_for(lambda: not any(_alive(p) for p in fake_vms), 2 * FENCE_AFTER + 3)
    assert time.monotonic() >= deadline, "killed before the deadline it held"
    assert watchdog.wait(timeout=5) == 0
    feeder.close()


def test_a_stopped_watchdog_without_vms_exits_at_once(run_dir: Path) -> None:
    run_dir.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hvcluster.watchdog", "--run-dir", str(run_dir)],
        stderr=subprocess.PIPE,
    )
    try:
        assert _wait_for(lambda: (run_dir / SOCKET_NAME).exists(), 10)
        WatchdogFeeder(run_dir).feed(time.monotonic() + 60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=3) == 0  # not held until the 60 s deadline: nothing to guard
    finally:
        proc.kill()
        proc.wait()
