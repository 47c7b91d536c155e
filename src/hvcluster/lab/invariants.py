"""The chaos checker: watches a lab all the time, from outside the cluster, and records every
broken invariant as a :class:`Violation` (``hvc lab chaos``, ``lab/chaos.py``).

1. Never two QEMU processes running the guest of one VM's disk at once, from the hosts'
   process tables (``lab/hostview.py``), not from the cluster's records. A live migration
   holds the disk in two processes: its target waits paused (``-incoming``) until the state
   has come over, and its source stops the guest before the target starts it. So when two
   processes hold one disk, each QEMU is asked whether it runs its guest (``query-status``
   on its second monitor), twice in turn: a source and a target both running it, at both
   looks, is a double run; one look at each around the switchover is not. A QEMU that
   cannot be asked counts as running, once that has lasted UNSURE_GRACE_S (one on its way
   out after a migration has closed its monitors while it still holds the disk).
2. Each guest's disk counter never goes backwards or resets (read as the lab tests read it,
   ``qemu-img dd -U``).
3. (Recovery within the SLO: the runner's, from :meth:`Checker.recovery`.)
4. No admin intent lost: a VM stopped by the administrator has no process anywhere and stays
   stopped; a paused node stays paused.
5. The API answers: some node's API answers within ``api_grace_s``, always.

Three threads: the process tables every ``interval`` seconds, the counters every second, the
API every half second (which also says which HA VMs run: where placed, at the placement's
epoch, as one process on that node).
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from hvcluster.guestimage.testguest import read_counter
from hvcluster.lab import hostview
from hvcluster.lab.availability import Looks
from hvcluster.lab.hostview import VMProcess
from hvcluster.lab.state import LabState
from hvcluster.models.errors import HvcError

API_TIMEOUT_S = 2.0
# A disk held by two processes of which one cannot be asked whether it runs the guest is a
# double run once this has lasted: QEMU closes its monitors on its way out, before its disks.
UNSURE_GRACE_S = 5.0


@dataclass(frozen=True)
class Violation:
    time: float
    rule: str  # two-copies | counter | recovery | intent | api
    subject: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "rule": self.rule,
            "subject": self.subject,
            "detail": self.detail,
        }


@dataclass
class Watched:
    """What the checker watches: HA VMs (name -> disk, None for sim), VMs the administrator
    stopped, nodes the administrator paused."""

    ha: dict[str, Path | None]
    stopped: list[str] = field(default_factory=list)
    paused: list[str] = field(default_factory=list)


class Checker:
    def __init__(
        self,
        state: Callable[[], LabState],
        watched: Watched,
        interval: float = 0.2,
        api_grace_s: float = 10.0,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        self._state = state
        self.watched = watched
        self.interval = interval
        self.api_grace_s = api_grace_s
        self.log = log
        self.violations: list[Violation] = []
        # "held twice": looks that found a disk held by two processes, one running the guest
        # (a migration in flight: the precise check of rule 1 at work)
        self.samples = {"processes": 0, "counters": 0, "api": 0, "held twice": 0}
        self.counter_errors = 0
        self.max_counter: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._processes: list[VMProcess] = []
        self._doubled: set[str] = set()  # disks (or VMs) now run twice: said once each
        self._unsure: dict[str, float] = {}  # disks held twice, one process mute: since when
        # VMs being moved live (the runner's migrations, lab/chaos_moves.py): one that runs
        # somewhere is not down while its placement and status switch over
        self.moving: set[str] = set()
        self._intent_broken: set[str] = set()
        self.looks = Looks()  # which HA VMs were down at each API look
        self._nodes_alive: dict[str, bool] = {}
        self._api_ok_at = time.monotonic()
        self._api_said = False
        self._threads = [
            threading.Thread(
                target=self._loop, args=(f, p), name=f"chaos-{f.__name__}", daemon=True
            )
            for f, p in (
                (self._look_at_processes, interval),
                (self._look_at_counters, 1.0),
                (self._look_at_api, 0.5),
            )
        ]

    # -- running -------------------------------------------------------------------------

    def start(self) -> Checker:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)

    def _loop(self, look: Callable[[], None], every: float) -> None:
        while not self._stop.is_set():
            try:
                look()
            except Exception as e:  # a checker that dies silently checks nothing: say it
                self.log(f"checker: {look.__name__} failed once: {type(e).__name__}: {e}")
            self._stop.wait(every)

    def violate(self, rule: str, subject: str, detail: str) -> None:
        v = Violation(time.time(), rule, subject, detail)
        with self._lock:
            self.violations.append(v)
        self.log(f"VIOLATION {rule} {subject}: {detail}")

    # -- 1 and 4: the process tables -----------------------------------------------------

    def _look_at_processes(self) -> None:
        names = [*self.watched.ha, *self.watched.stopped]
        found = hostview.vm_processes(self._state(), names)
        self.samples["processes"] += 1
        holders: dict[str, list[VMProcess]] = {}
        disks = self._disks()
        waiting: set[int] = set()  # pids of a migration's processes not running the guest
        for p in found:
            # A VM with a disk by the disk only: a QEMU daemonizing is two processes of one
            # name for a moment (the first opens no disk, waits for the one it forked and
            # exits). A VM without one (sim) by its name.
            keys = [f"disk {d}" for d in p.disks if d in disks]
            if p.vm and self.watched.ha.get(p.vm, 0) is None:
                keys = [f"vm {p.vm}"]
            for key in keys:
                holders.setdefault(key, []).append(p)
        unsure: dict[str, float] = {}
        said: dict[str, str] = {}
        now = time.monotonic()
        for key, ps in holders.items():
            if len(ps) < 2:
                continue
            answers = guest_answers(ps)
            running = [p for p, runs in answers if runs is not False]
            waiting |= {p.pid for p, runs in answers if runs is False}
            sure = [p for p, runs in answers if runs]
            # both said so: at once; with one that cannot be asked, once it has lasted
            # (a QEMU exiting after its migration has closed its monitors, the disk not yet)
            if len(running) > 1:
                unsure[key] = self._unsure.get(key, now)
            if len(sure) > 1 or (len(running) > 1 and now - unsure[key] >= UNSURE_GRACE_S):
                said[key] = ", ".join(
                    f"pid {p.pid} on {p.node} ({'runs it' if runs else 'cannot be asked'})"
                    for p, runs in answers
                    if runs is not False
                )
            elif len(running) < 2:
                self.samples["held twice"] += 1
        self._unsure = unsure
        with self._lock:
            self._processes = [p for p in found if p.pid not in waiting]
        for key in sorted(set(said) - self._doubled):
            self.violate("two-copies", key, f"processes running the guest: {said[key]}")
        self._doubled = set(said)
        for vm in self.watched.stopped:
            running = [p for p in found if p.vm == vm]
            if running and f"vm {vm}" not in self._intent_broken:
                self._intent_broken.add(f"vm {vm}")
                where = ", ".join(f"pid {p.pid} on {p.node}" for p in running)
                self.violate("intent", f"vm/{vm}", f"stopped by the administrator, runs: {where}")

    def _disks(self) -> set[str]:
        return {os.path.realpath(d) for d in self.watched.ha.values() if d is not None}

    # -- 2: the counters -----------------------------------------------------------------

    def _look_at_counters(self) -> None:
        for vm, disk in self.watched.ha.items():
            if disk is None:
                continue
            try:
                value = read_counter(disk)
            except (HvcError, OSError):
                self.counter_errors += 1
                continue
            last = self.max_counter.get(vm, 0)
            if value < last:
                self.violate("counter", f"vm/{vm}", f"disk counter went from {last} to {value}")
            self.max_counter[vm] = max(last, value)
        self.samples["counters"] += 1

    # -- 3, 4 and 5: the API -------------------------------------------------------------

    def _look_at_api(self) -> None:
        state = self._state()
        answer = self._ask(state)
        now = time.monotonic()
        if answer is None:
            if now - self._api_ok_at > self.api_grace_s and not self._api_said:
                self._api_said = True
                self.violate("api", "api", f"no node's API answered for {self.api_grace_s:.0f} s")
            return
        self._api_ok_at, self._api_said = now, False
        vms, nodes = answer
        self.samples["api"] += 1
        with self._lock:
            procs = list(self._processes)
        with self._lock:
            moving = set(self.moving)
        down = frozenset(
            vm
            for vm in self.watched.ha
            if not _runs_once(vms.get(vm), procs, vm)
            and not (vm in moving and any(p.vm == vm and not p.stopped for p in procs))
        )
        self.looks.add(time.time(), down)
        with self._lock:
            self._nodes_alive = {n["name"]: bool(n["alive"]) for n in nodes}
        for vm in self.watched.stopped:
            desired = (vms.get(vm) or {}).get("desired_state")
            if desired != "stopped" and f"desired {vm}" not in self._intent_broken:
                self._intent_broken.add(f"desired {vm}")
                self.violate("intent", f"vm/{vm}", f"stopped by the administrator, now {desired}")
        for n in nodes:
            key = f"node {n['name']}"
            paused = n["admin_state"] == "paused"
            if n["name"] in self.watched.paused and not paused and key not in self._intent_broken:
                self._intent_broken.add(key)
                self.violate("intent", f"node/{n['name']}", f"paused, now {n['admin_state']}")

    def _ask(self, state: LabState) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=state.ca) if state.ca else False
        )
        for node in state.nodes:
            base = f"{state.api_url(node)}/api/v1"
            try:
                with httpx.Client(verify=verify, headers=state.auth(), timeout=API_TIMEOUT_S) as c:
                    vms = c.get(f"{base}/vms")
                    nodes = c.get(f"{base}/nodes")
            except httpx.HTTPError:
                continue
            if vms.status_code == 200 and nodes.status_code == 200:
                return {v["name"]: v for v in vms.json()["vms"]}, list(nodes.json()["nodes"])
        return None

    # -- for the runner ------------------------------------------------------------------

    def set_moving(self, vm: str, moving: bool) -> None:
        with self._lock:
            (self.moving.add if moving else self.moving.discard)(vm)

    def nodes_alive(self) -> dict[str, bool]:
        with self._lock:
            return dict(self._nodes_alive)

    def all_running_since(self, t: float) -> bool:
        return self.looks.all_running_since(t)

    def recovery(self, start: float, end: float) -> tuple[bool, float]:
        return self.looks.recovery(start, end)


def _runs_once(view: dict[str, Any] | None, procs: list[VMProcess], vm: str) -> bool:
    """The VM runs: its status says running where and at the epoch it is placed, and one
    process of it runs there (its host not frozen), none elsewhere."""
    if view is None:
        return False
    status, placement = view.get("status") or {}, view.get("placement") or {}
    if status.get("state") not in ("running", "migrating") or not placement:
        return False
    if status.get("node") != placement.get("node") or status.get("epoch") != placement.get("epoch"):
        return False
    mine = [p for p in procs if p.vm == vm]
    return len(mine) == 1 and mine[0].node == placement["node"] and not mine[0].stopped


def guest_answers(ps: list[VMProcess]) -> list[tuple[VMProcess, bool | None]]:
    """Whether each of ``ps`` (holding one disk) runs the guest (None: it cannot be asked):
    asked in turn, then those that did not say no asked again, so that a source asked before
    its switchover and a target after it are not both counted."""
    first = [(p, hostview.runs_guest(p)) for p in ps]
    if sum(runs is not False for _, runs in first) < 2:
        return first
    return [(p, runs if runs is False else hostview.runs_guest(p)) for p, runs in first]


def running_guests(ps: list[VMProcess]) -> list[VMProcess]:
    """Those of ``ps`` that run the guest or cannot say (:func:`guest_answers`)."""
    return [p for p, runs in guest_answers(ps) if runs is not False]
