"""Failover of real QEMU guests in a real lab: etcd, three agents with watchdogs, real faults.

The test guest writes a rising counter to its disk every ~200 ms: a VM that was reset, ran
twice or lost writes shows it there."""

from __future__ import annotations

import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from hvcluster.guestimage.image import require_image
from hvcluster.guestimage.testguest import create_disk, read_counter
from hvcluster.lab import processes
from tests.lab.conftest import CACHE, Lab, config, controller_cycled, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.qemu, pytest.mark.timeout(240)]


def create_guest(
    lab: Lab, name: str, home: str, memory_mib: int = 128, only_there: bool = False
) -> Path:
    """A test guest on a new disk, preferring ``home`` (high priority), or allowed nowhere
    else if ``only_there``; its disk."""
    disk = Path(lab.state.shared_dir) / f"{name}.qcow2"
    create_disk(disk)
    ha: dict[str, Any] = {"preferred_owners": [home]}
    ha.update({"possible_owners": [home]} if only_there else {"priority": "high"})
    spec = {
        "name": name,
        "memory_mib": memory_mib,
        "boot": require_image(CACHE).boot().model_dump(),
        "disks": [{"path": str(disk)}],
        "ha": ha,
    }
    lab.post("/vms", spec)
    return disk


def agent_cycled(lab: Lab, node: str, timeout: float = 60) -> None:
    """Positive evidence that ``node``'s agent ran whole reconcile cycles after this call
    (each compares every placement with what runs there): a canary guest that may run only
    there, created now, runs there (then is removed)."""
    name = f"canary-{uuid.uuid4().hex[:8]}"
    create_guest(lab, name, node, memory_mib=64, only_there=True)
    try:
        wait_for(lambda: running(lab, name), timeout, f"the canary {name} running on {node}")
    finally:
        lab.delete(f"/vms/{name}")


def running(lab: Lab, name: str, avoid: str | None = None) -> dict[str, Any] | None:
    """The VM, once its placement's node reports it running at the placement's epoch, on a
    node other than ``avoid`` (whose API is not asked either)."""
    vm = lab.vm(name, avoid)
    status = vm.get("status") or {}
    placement = vm.get("placement") or {}
    if (
        status.get("state") == "running"
        and status.get("epoch") == placement.get("epoch")
        and status.get("node") == placement.get("node") != avoid
    ):
        return vm
    return None


def vm_pid(lab: Lab, node: str, vm: str) -> int | None:
    try:
        pid = int((Path(lab.state.node(node).run_dir) / "vms" / vm / "pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if processes.alive(pid) else None


def counter_rises(disk: Path, above: int, timeout: float = 90) -> int:
    """The guest's disk counter once above ``above``. A wait for something to happen, not a
    bound: a TCG boot took over 30 s at load 8 to 11 (two failures of 'hang-1' so)."""
    value: int = wait_for(
        lambda: (c := read_counter(disk)) > above and c,
        timeout,
        f"counter of {disk.name} above {above}",
        every=0.3,
    )
    return value


class TwoCopies:
    """Samples every 20 ms how many QEMU processes of one VM run across all nodes."""

    def __init__(self, lab: Lab, vm: str) -> None:
        self.lab, self.vm = lab, vm
        self.nodes = [n.name for n in lab.state.nodes]
        self.max_seen = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            live = [n for n in self.nodes if vm_pid(self.lab, n, self.vm)]
            self.max_seen = max(self.max_seen, len(live))
            self.samples += 1
            time.sleep(0.02)

    def __enter__(self) -> TwoCopies:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_host_crash_moves_the_vm_and_its_counter_continues(qemu_lab: Lab) -> None:
    lab = qemu_lab
    disk = create_guest(lab, "crash-1", "n2")
    vm = wait_for(lambda: running(lab, "crash-1"), 60, "crash-1 running")
    assert vm["node"] == "n2"
    before = counter_rises(disk, 0)
    with TwoCopies(lab, "crash-1") as copies:
        lab.fault("kill", "n2")
        after_kill = read_counter(disk)
        moved = wait_for(lambda: running(lab, "crash-1", avoid="n2"), 60, "recovery", 0.2)
    assert moved["node"] in ("n1", "n3")
    assert moved["placement"]["epoch"] == 2
    assert copies.max_seen <= 1, "two QEMU processes ran the VM at once"
    assert after_kill >= before
    resumed = counter_rises(disk, after_kill)
    assert resumed > after_kill  # continued from where it was, never below
    reasons = [
        e["event"]["reason"]
        for e in lab.events(avoid="n2")
        if e["event"]["kind"] == "vm.recovered" and e["event"]["subject"] == "vm/crash-1"
    ]
    assert reasons and "n2" in reasons[-1]
    lab.restart("n2")
    wait_for(
        lambda: any(n["name"] == "n2" and n["alive"] for n in lab.get("/nodes")["nodes"]),
        30,
        "n2 back",
    )


def test_a_hung_agent_is_fenced_by_its_watchdog_before_the_vm_starts_elsewhere(
    qemu_lab: Lab,
) -> None:
    lab = qemu_lab
    disk = create_guest(lab, "hang-1", "n3")
    wait_for(lambda: running(lab, "hang-1"), 60, "hang-1 running")
    old_pid = vm_pid(lab, "n3", "hang-1")
    assert old_pid
    counter_rises(disk, 0)
    try:
        with TwoCopies(lab, "hang-1") as copies:
            lab.fault("stop", "n3")
            wait_for(lambda: not processes.alive(old_pid), 10, "the watchdog to kill QEMU", 0.02)
            killed_at = time.monotonic()
            last = read_counter(disk)
            moved = wait_for(lambda: running(lab, "hang-1", avoid="n3"), 60, "recovery", 0.2)
            recovered_at = time.monotonic()
        assert copies.max_seen <= 1 and copies.samples > 50
        assert recovered_at > killed_at
        assert moved["node"] != "n3"
        log = (Path(lab.state.node("n3").run_dir) / "watchdog.log").read_text()
        assert f"killed hang-1 (pid {old_pid})" in log
        assert counter_rises(disk, last) > last
    finally:
        lab.fault("cont", "n3")
    # The resumed agent finds its VM moved away and leaves it be.
    wait_for(
        lambda: any(n["name"] == "n3" and n["alive"] for n in lab.get("/nodes")["nodes"]),
        30,
        "n3 back",
    )
    agent_cycled(lab, "n3")  # had it been confused, it would have started its old copy
    assert vm_pid(lab, "n3", "hang-1") is None
    assert running(lab, "hang-1")["node"] == moved["node"]  # type: ignore[index]


def test_agent_killed_and_restarted_within_fence_after_changes_nothing(qemu_lab: Lab) -> None:
    lab = qemu_lab
    disk = create_guest(lab, "steady-1", "n1")
    before = wait_for(lambda: running(lab, "steady-1"), 60, "steady-1 running")
    pid = vm_pid(lab, "n1", "steady-1")
    counter_rises(disk, 0)
    recovered_before = _count(lab, "vm.recovered", "vm/steady-1")
    cfg = config(lab)
    lab.fault("kill-agent", "n1")
    killed = time.monotonic()
    lab.restart("n1")
    # Had the lease been lost, steady-1 would be recovered this long after the kill: wait
    # past that on the clock, then for a whole controller cycle after it.
    moment = killed + cfg.lease_ttl_s + cfg.fence_after_s + cfg.recovery_margin_s
    wait_for(lambda: time.monotonic() >= moment, moment - time.monotonic() + 5, "the moment")
    controller_cycled(lab, avoid="n1")
    after = wait_for(lambda: running(lab, "steady-1"), 30, "steady-1 still running")
    assert vm_pid(lab, "n1", "steady-1") == pid  # same QEMU process
    assert after["placement"]["epoch"] == before["placement"]["epoch"]
    assert _count(lab, "vm.recovered", "vm/steady-1") == recovered_before
    assert any(e["event"]["kind"] == "node.rejoined" for e in lab.events())
    counter_rises(disk, read_counter(disk))


def test_a_killed_controller_is_replaced_within_a_lease_ttl(qemu_lab: Lab) -> None:
    lab = qemu_lab
    elected = [e for e in lab.events() if e["event"]["kind"] == "controller.elected"]
    leader = elected[-1]["event"]["subject"].split("/")[1]
    before = {vm["name"]: vm["placement"] for vm in lab.get("/vms")["vms"]}
    lab.fault("kill-agent", leader)
    t0 = time.monotonic()
    lab.restart(leader)  # back within fence_after: its own VMs are not fenced

    def new_leader() -> str | None:
        events = [e for e in lab.events(avoid=leader) if e["event"]["kind"] == "controller.elected"]
        subject: str = events[-1]["event"]["subject"]
        return subject if events and subject != f"node/{leader}" else None

    wait_for(new_leader, 10, "a new controller")
    elapsed = time.monotonic() - t0
    assert elapsed < 4.0 + 2.0  # one lease TTL (+ the time to see it)
    controller_cycled(lab, avoid=leader)  # the new controller has decided
    after = {vm["name"]: vm["placement"] for vm in lab.get("/vms", avoid=leader)["vms"]}
    assert after == before  # the new controller re-decided nothing
    # No decision was ever applied twice: each (vm, epoch) was placed or recovered once.
    decided = [
        (e["event"]["subject"], re.search(r"\(epoch (\d+)\)", e["event"]["reason"]))
        for e in lab.events(avoid=leader)
        if e["event"]["kind"] in ("vm.placed", "vm.recovered")
    ]
    keys = [(subject, m.group(1)) for subject, m in decided if m]
    assert len(keys) == len(decided) and len(keys) == len(set(keys))


def _count(lab: Lab, kind: str, subject: str | None = None, avoid: str | None = None) -> int:
    return sum(
        1
        for e in lab.events(avoid=avoid)
        if e["event"]["kind"] == kind and (subject is None or e["event"]["subject"] == subject)
    )


def checkpoint(lab: Lab, path: str, avoid: str | None = None) -> dict[str, Any]:
    """POST ``path`` (a checkpoint change; create: of 'one') and wait for it: done."""
    op = lab.post(path, {"name": "one"} if path.endswith("/checkpoints") else None, avoid)

    def ended() -> dict[str, Any] | None:
        found: dict[str, Any] = lab.get(f"/checkpoint-ops/{op['id']}", avoid)
        return found if found["state"] in ("done", "failed") else None

    done: dict[str, Any] = wait_for(ended, 60, f"checkpoint operation {op['id']}", 0.2)
    assert done["state"] == "done", done["reason"]
    return done


def reverts(lab: Lab, vm: str, disk: Path, at: int, node: str, avoid: str | None = None) -> None:
    """Checkpoint 'one' (taken with the counter at ``at`` or below) is listed with memory,
    and a revert (done on ``node``) sends the guest's counter back; it runs on from there.
    The counter is first seen well past ``at`` on the disk: a guest that failed over need
    not have booted (the revert loads the saved memory instead)."""
    [cp] = lab.get(f"/vms/{vm}/checkpoints", avoid)["checkpoints"]
    assert (cp["name"], cp["memory"]) == ("one", True) and cp["size"] > 0
    before = counter_rises(disk, at + 15)
    assert checkpoint(lab, f"/vms/{vm}/checkpoints/one/revert", avoid)["node"] == node
    back = read_counter(disk)
    assert back < before, (at, back, before)
    counter_rises(disk, back)


def test_a_checkpoint_survives_live_migration_and_failover(qemu_lab: Lab) -> None:
    """Taken where the guest runs; the guest live-migrated to another node, then failed over
    when that node dies: each time the checkpoint is still listed (it lives in the qcow2
    disk) and reverts."""
    lab = qemu_lab
    earlier = ("crash-1", "hang-1", "steady-1")  # the module's guests so far: room for this one
    for done in earlier:
        if lab.get_status(f"/vms/{done}") == 200:
            lab.delete(f"/vms/{done}")
    wait_for(lambda: all(lab.get_status(f"/vms/{d}") == 404 for d in earlier), 30, "them gone")
    disk = create_guest(lab, "cp-1", "n1")
    first = wait_for(lambda: running(lab, "cp-1"), 60, "cp-1 running")["node"]
    counter_rises(disk, 5, timeout=90)  # its boot: TCG on a loaded machine took over 30 s
    assert checkpoint(lab, "/vms/cp-1/checkpoints")["node"] == first
    at = read_counter(disk)
    to = "n2" if first != "n2" else "n3"
    rec = wait_for(lambda: move_when_room(lab, "cp-1", to), 60, f"room for cp-1 on {to}")
    wait_for(lambda: lab.get(f"/migrations/{rec['id']}")["state"] == "done", 90, "migration")
    wait_for(lambda: (vm := running(lab, "cp-1")) and vm["node"] == to, 30, f"cp-1 on {to}")
    reverts(lab, "cp-1", disk, at, to)

    counter_rises(disk, at + 15)  # past the checkpoint again when its node dies
    lab.fault("kill", to)
    moved = wait_for(lambda: running(lab, "cp-1", avoid=to), 90, "recovery", 0.2)
    reverts(lab, "cp-1", disk, at, moved["node"], avoid=to)
    lab.restart(to)
    wait_for(
        lambda: any(n["name"] == to and n["alive"] for n in lab.get("/nodes")["nodes"]),
        30,
        f"{to} back",
    )
    lab.delete("/vms/cp-1")


def move_when_room(lab: Lab, vm: str, to: str) -> dict[str, Any] | None:
    """Ask to move ``vm`` live to ``to``: its record, or None while ``to`` has no room yet (the
    VMs deleted before are still stopping there)."""
    r = httpx.post(
        f"{lab.api()}/api/v1/vms/{vm}/move",
        json={"to": to, "kind": "live"},
        headers=lab.headers,
        verify=lab.ca,
        timeout=10,
    )
    if r.status_code == 409 and "free" in r.text:
        return None
    assert r.status_code < 300, r.text
    answer: dict[str, Any] = r.json()
    return answer
