"""``hvc lab chaos``: random faults at random times against a running lab, one at a time, each
undone after its hold, while the checker (``lab/invariants.py``) watches from outside.

A run first sets the lab up for itself: the cluster's quarantine threshold and local restart
threshold raised (a node crashed ten times in a chaos run must not end quarantined, nor a VM
killed four times end failed: both would be the cluster honouring its thresholds, not
recovering), its own HA test guests (failover threshold raised too), a VM the administrator
stopped and (with three nodes or more) a node the administrator paused: the admin intent the
checker watches. Then, until the duration is spent: wait a random gap, inject a fault
(``lab/chaos_plan.py``), hold it, undo it, and wait until the cluster is back: every node
alive, every etcd member healthy, every HA VM running. The recovery of a fault is the time
from the fault until every HA VM runs again; it must be within the SLO. Meanwhile (unless
``migrations`` is off) HA guests are moved live at random times (``lab/chaos_moves.py``), so
that faults hit migrations in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from hvcluster.guestimage.image import require_image
from hvcluster.guestimage.testguest import create_disk
from hvcluster.lab import cluster, faults, members
from hvcluster.lab.chaos_moves import Mover
from hvcluster.lab.chaos_plan import KINDS, Fault, Planner, Timing
from hvcluster.lab.chaos_report import FaultRecord, report
from hvcluster.lab.invariants import Checker, Watched
from hvcluster.lab.state import LabState, load
from hvcluster.models.base import decode
from hvcluster.models.config import ClusterConfig
from hvcluster.models.errors import HvcError
from hvcluster.models.vm import FAILOVERS_MAX
from hvcluster.store.etcd import EtcdStore
from hvcluster.store.etcd_conn import EtcdTls
from hvcluster.store.keys import Keys

Log = Callable[[str], None]
PREFIX = "chaos-"
STOPPED_VM = "chaos-stopped"
THRESHOLD = 1_000_000  # quarantine and local restarts: never reached in a run


class ChaosError(HvcError):
    pass


@dataclass
class Options:
    duration_s: float = 600.0
    seed: int = 1
    kinds: tuple[str, ...] = KINDS
    vms: int = 2
    memory_mib: int = 128
    slo_s: float = 30.0  # every HA VM running again within this after a fault
    settle_timeout_s: float = 90.0  # the lab back (nodes, members) after a fault is undone
    boot_timeout_s: float = 240.0  # the guests' counters running before the first fault
    cache: Path = Path("/var/cache/hvcluster")
    pause_node: bool = True
    migrations: bool = True  # live moves of HA guests at random times, beside the faults
    migrate_every_s: tuple[float, float] = (5.0, 15.0)


@dataclass
class Setup:
    watched: Watched
    timing: Timing
    settings: dict[str, Any] = field(default_factory=dict)


def run(lab_dir: Path, options: Options, log: Log = print) -> dict[str, Any]:
    """Run a chaos against the lab in ``lab_dir``; the report (``lab/chaos_report.py``)."""
    state = load(lab_dir)
    kinds = options.kinds
    if state.net is None and "partition" in kinds:
        kinds = tuple(k for k in kinds if k != "partition")
        log("no partitions: this lab has no network namespaces (hvc lab up --netns)")
    if not kinds:
        raise ChaosError("no fault kind left to inject")
    setup = prepare(state, options, log)
    planner = Planner(
        options.seed,
        kinds,
        [n.name for n in state.nodes],
        [m.name for m in state.etcd_members],
        list(setup.watched.ha),
        setup.timing,
        quiet=tuple(setup.watched.paused),
    )
    checker = Checker(lambda: load(lab_dir), setup.watched, log=log).start()
    moving = list(setup.watched.ha) if options.migrations else []
    mover = Mover(
        lambda: load(lab_dir), moving, checker, options.seed, options.migrate_every_s, log
    )
    records: list[FaultRecord] = []
    started = time.time()
    try:
        _wait_back(lab_dir, checker, options.settle_timeout_s, 0.0)
        _wait_booted(checker, setup.watched, options.boot_timeout_s, log)
        mover.start()
        end = time.monotonic() + options.duration_s
        while time.monotonic() < end:
            time.sleep(planner.gap())
            record = one_fault(lab_dir, planner.next(), checker, setup.timing, options, log)
            records.append(record)
            if record.aborted:
                break
    finally:
        mover.stop()
        checker.stop()
    events = _events(load(lab_dir), started)
    return report(options, setup, records, checker, started, events, kinds, mover.moves)


def one_fault(
    lab_dir: Path, fault: Fault, checker: Checker, timing: Timing, options: Options, log: Log
) -> FaultRecord:
    """Inject ``fault``, hold it, undo it, wait until the lab is back; what happened."""
    log(f"fault: {fault.describe()}")
    t0 = time.time()
    record = FaultRecord(fault, t0)
    try:
        faults.fault(
            load(lab_dir),
            fault.action,
            fault.target,
            ms=round(fault.hold_s * 1000) if fault.action == "delay" else None,
            source=fault.source,
        )
    except HvcError as e:  # e.g. a VM to kill that runs nowhere right now (it is moving)
        record.skipped = str(e)
        log(f"  skipped: {e}")
        return record
    if fault.undo:
        time.sleep(max(0.0, fault.hold_s - (time.time() - t0)))
        _undo(lab_dir, fault)
    record.undone = time.time()
    # Watched a lease longer after it is undone, whatever it was: a watchdog that fires, a
    # lease that expires because of it, shows by then (a killed agent started again at once
    # has VMs that still run and a lease that still holds for a while: the next fault must
    # not be blamed for what follows).
    watch = timing.lease_ttl_s + 1.0
    back = _wait_back(lab_dir, checker, options.slo_s + options.settle_timeout_s, watch)
    record.settled = time.time()
    record.affected, record.recovery_s = checker.recovery(t0, record.settled)
    if not back:
        record.aborted = True
        checker.violate(
            "recovery", fault.target, f"the lab did not come back after {fault.describe()}"
        )
    elif record.recovery_s > options.slo_s:
        checker.violate(
            "recovery",
            fault.target,
            f"HA VMs running again {record.recovery_s:.1f} s after {fault.describe()} "
            f"(SLO {options.slo_s:.0f} s)",
        )
    if record.affected:
        log(f"  every HA VM running again after {record.recovery_s:.2f} s")
    return record


def _undo(lab_dir: Path, fault: Fault) -> None:
    state = load(lab_dir)
    if fault.undo == "start":
        cluster.start_node(state, fault.target)
    else:
        faults.fault(state, fault.undo, fault.target)


def _wait_booted(checker: Checker, watched: Watched, timeout: float, log: Log) -> None:
    """Until every guest with a disk has written its counter (it booted), so that the counter
    invariant has something to guard from the first fault (a TCG guest on a loaded machine
    takes a minute or more); said if not within ``timeout``."""
    start = time.monotonic()
    guests = [vm for vm, disk in watched.ha.items() if disk is not None]
    while time.monotonic() - start < timeout:
        if all(checker.max_counter.get(vm, 0) > 0 for vm in guests):
            log(f"guests booted (their disk counters run) after {time.monotonic() - start:.0f} s")
            return
        time.sleep(0.5)
    log(f"not every guest wrote its disk counter within {timeout:.0f} s: faults begin anyway")


def _wait_back(lab_dir: Path, checker: Checker, timeout: float, at_least: float) -> bool:
    """Until every node is alive, every etcd member healthy and every HA VM running (for a
    second), and ``at_least`` seconds have passed; False if not within ``timeout``."""
    start = time.monotonic()
    end = start + timeout
    while time.monotonic() < end:
        time.sleep(0.25)
        if time.monotonic() - start < at_least:
            continue
        state = load(lab_dir)
        alive = checker.nodes_alive()
        if len(alive) < len(state.nodes) or not all(alive.values()):
            continue
        if not all(members.healthy(state, m, 1.0) for m in state.etcd_members):
            continue
        if checker.all_running_since(time.time() - 1.0):
            return True
    return False


# -- setting the lab up for a run ----------------------------------------------------------


def prepare(state: LabState, options: Options, log: Log) -> Setup:
    """Thresholds raised, the admin intent made, the HA guests created and running."""
    config = asyncio.run(_raise_thresholds(state))
    settings = {
        "profile": config.profile() or "custom",
        "quarantine_threshold": config.quarantine.threshold,
        "local_restart_threshold": config.local_restart_threshold,
        "vm_failover_threshold": FAILOVERS_MAX,
        "lease_ttl_s": config.lease_ttl_s,
        "fence_after_s": config.fence_after_s,
        "keepalive_interval_s": config.keepalive_interval_s,
    }
    log(
        f"thresholds for this run: node quarantine after {THRESHOLD} failures, local restarts "
        f"{THRESHOLD}, each chaos VM's failover threshold {FAILOVERS_MAX} (the cluster honours "
        "them: lower ones would leave nodes quarantined and VMs failed by design); timings "
        f"({config.profile() or 'custom'} profile): "
        f"lease {config.lease_ttl_s} s, fence_after {config.fence_after_s} s, keepalive "
        f"{config.keepalive_interval_s} s"
    )
    api = _Api(state)
    paused = []
    if options.pause_node and len(state.nodes) >= 3:
        node = state.nodes[-1].name
        api.post(f"/nodes/{node}/pause", {"reason": "hvc lab chaos: an admin intent to keep"})
        paused.append(node)
    ha: dict[str, Path | None] = {}
    for i in range(options.vms):
        name = f"{PREFIX}{i + 1}"
        spec, disk = _spec(state, name, options)
        api.post("/vms", spec)
        ha[name] = disk
    stopped_spec, _ = _spec(state, STOPPED_VM, options)
    api.post("/vms", stopped_spec | {"desired_state": "stopped"})
    log(
        f"chaos VMs: {', '.join(ha)} (HA, high priority); {STOPPED_VM} stopped"
        + (f"; node {paused[0]} paused" if paused else "")
    )
    timing = Timing(lease_ttl_s=config.lease_ttl_s, fence_after_s=config.fence_after_s)
    return Setup(Watched(ha, [STOPPED_VM], paused), timing, settings)


def _spec(state: LabState, name: str, options: Options) -> tuple[dict[str, Any], Path | None]:
    spec: dict[str, Any] = {
        "name": name,
        "memory_mib": options.memory_mib,
        "ha": {"priority": "high", "failover_threshold": FAILOVERS_MAX},
    }
    if state.driver != "qemu":
        return spec, None
    disk = create_disk(Path(state.shared_dir) / f"{name}.qcow2")
    spec["boot"] = require_image(options.cache).boot().model_dump()
    spec["disks"] = [{"path": str(disk)}]
    return spec, disk


def _store(state: LabState) -> EtcdStore:
    tls = None
    if state.ca:
        tls = EtcdTls(Path(state.ca), Path(state.client_cert), Path(state.client_key))
    return EtcdStore(list(state.etcd_endpoints), timeout=5.0, tls=tls)


async def _read_config(state: LabState) -> ClusterConfig:
    store = _store(state)
    try:
        kv = await store.get(Keys(state.cluster).config)
        return decode(ClusterConfig, kv.key, kv.value) if kv else ClusterConfig()
    finally:
        await store.close()


async def _raise_thresholds(state: LabState) -> ClusterConfig:
    """The cluster config with quarantine and local restarts out of a run's reach, written
    straight into etcd (there is no API route for the cluster config)."""
    config = await _read_config(state)
    quarantine = config.quarantine.model_copy(update={"threshold": THRESHOLD})
    config = config.model_copy(
        update={"quarantine": quarantine, "local_restart_threshold": THRESHOLD}
    )
    store = _store(state)
    try:
        await store.put(Keys(state.cluster).config, config.model_dump_json().encode())
    finally:
        await store.close()
    return config


class _Api:
    def __init__(self, state: LabState) -> None:
        self.base = f"{state.api[0]}/api/v1"
        self.headers = state.auth()
        self.verify = ssl.create_default_context(cafile=state.ca) if state.ca else False

    def post(self, path: str, body: dict[str, Any]) -> Any:
        r = httpx.post(
            f"{self.base}{path}", json=body, headers=self.headers, verify=self.verify, timeout=10
        )
        if r.status_code >= 300:
            raise ChaosError(f"POST {path}: {r.status_code} {r.text[:300]}")
        return r.json()

    def get(self, path: str) -> Any:
        r = httpx.get(f"{self.base}{path}", headers=self.headers, verify=self.verify, timeout=10)
        r.raise_for_status()
        return r.json()


def _events(state: LabState, since: float) -> list[dict[str, Any]]:
    """The cluster's events since ``since`` (from any API that answers)."""
    verify = ssl.create_default_context(cafile=state.ca) if state.ca else False
    for node in state.nodes:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            r = httpx.get(
                f"{state.api_url(node)}/api/v1/events?limit=5000",
                headers=state.auth(),
                verify=verify,
                timeout=10,
            )
            if r.status_code == 200:
                events = [e["event"] for e in r.json()["events"]]
                return [e for e in events if e["time"] >= since]
    return []
