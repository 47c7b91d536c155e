"""A 3-minute chaos (fixed seed) against a real lab: three etcd members and three nodes in
network namespaces, two real QEMU test guests, every fault kind, and live migrations of the
guests at random times beside them. The checker watching from outside (the hosts' process
tables and each QEMU's own run state, the guests' disk counters, the API) must find nothing.
Then the checker is shown to see what it looks for: a second process holding a guest's disk,
a stopped VM started."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hvcluster.guestimage.image import cached_image
from hvcluster.lab import chaos, chaos_report
from hvcluster.lab.chaos_plan import KINDS
from hvcluster.lab.invariants import Checker, Watched
from hvcluster.lab.state import load
from tests.lab.conftest import CACHE, Lab, make_lab, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.qemu, pytest.mark.timeout(480)]

SEED = 13
DURATION_S = 180.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if cached_image(CACHE) is None:
        pytest.fail("the test guest image is not built: run scripts/install (hvc image build)")
    yield from make_lab(tmp_path_factory.mktemp("chaos-lab"), "qemu", network="netns", etcd=3)


@pytest.fixture(scope="module")
def result(lab: Lab) -> dict[str, object]:
    options = chaos.Options(
        duration_s=DURATION_S, seed=SEED, vms=2, cache=CACHE, boot_timeout_s=120.0
    )
    said: list[str] = []
    out = chaos.run(lab.dir, options, log=said.append)
    print("\n".join(said))
    print(chaos_report.verdict(out))
    (lab.dir / "chaos.json").write_text(json.dumps(out, indent=2))
    return out


def test_a_three_minute_chaos_breaks_no_invariant(result: dict[str, object]) -> None:
    assert result["violations"] == [], json.dumps(result["violations"], indent=2)
    assert not result["aborted"]
    assert result["false_failovers"] == [], result["false_failovers"]
    assert int(result["faults"]) >= 8  # type: ignore[call-overload]
    by_kind = result["by_kind"]
    assert isinstance(by_kind, dict) and set(by_kind) == set(KINDS)
    samples = result["checker"]["samples"]  # type: ignore[index]
    assert samples["processes"] > 300 and samples["counters"] > 60 and samples["api"] > 150
    counters = result["checker"]["counters"]  # type: ignore[index]
    assert all(counters[vm] > 0 for vm in ("chaos-1", "chaos-2"))  # the guests wrote
    # live migrations beside the faults, and the checker saw their two processes as one run
    moves = result["migrations"]
    assert isinstance(moves, dict) and moves["requested"] >= 5, moves
    assert moves["outcomes"].get("done", 0) >= 3, moves
    assert "unfinished" not in moves["outcomes"], moves
    assert samples["held twice"] > 0


def test_the_checker_sees_a_second_holder_of_a_disk_and_a_stopped_vm_started(
    lab: Lab, result: dict[str, object]
) -> None:
    state = lab.state
    watched = Watched(
        {"chaos-1": Path(state.shared_dir) / "chaos-1.qcow2"}, stopped=[chaos.STOPPED_VM]
    )
    checker = Checker(lambda: load(lab.dir), watched).start()
    disk = watched.ha["chaos-1"]
    run_dir = state.nodes[0].run_dir
    # A process named as QEMU, of node n1, holding the guest's disk open: a second copy.
    fake = subprocess.Popen(
        ["bash", "-c", f"exec 3<{disk}; exec -a qemu-system-x86_64 tail -f {run_dir}/agent.log"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: [v for v in checker.violations if v.rule == "two-copies"], 20, "two copies"
        )
        lab.post(f"/vms/{chaos.STOPPED_VM}/start")
        wait_for(lambda: [v for v in checker.violations if v.rule == "intent"], 10, "intent")
    finally:
        fake.kill()
        fake.wait()
        checker.stop()
    two = next(v for v in checker.violations if v.rule == "two-copies")
    assert str(disk) in two.subject and f"pid {fake.pid} on n1" in two.detail
