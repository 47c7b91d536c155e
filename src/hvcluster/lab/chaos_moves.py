"""Live migrations in the background of a chaos run (``hvc lab chaos``): at random times a
random HA test guest is moved live, through the API as an administrator would, so that
faults hit migrations in flight (a source or target node killed, frozen or cut in the middle
of a transfer, etcd losing a member at the switchover).

One migration at a time, each followed to its end (done, failed or cancelled); one the
cluster refused up front (no target fits, the VM is not running, another is in flight) is
counted as refused, with its reason. While a VM moves, the checker is told
(:meth:`~hvcluster.lab.invariants.Checker.set_moving`): a VM that runs somewhere is not down
while its placement and status switch over. The checker's invariants hold through all of it:
never two processes running the guest (a migration's target waits paused until the state has
come over), and the disk counter never goes back.
"""

from __future__ import annotations

import random
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from hvcluster.lab.invariants import Checker
from hvcluster.lab.state import LabState

ENDED = ("done", "failed", "cancelled")
FOLLOW_S = 180.0  # a migration not ended after this long is reported unfinished
SETTLE_S = 3.0  # after it ends, how long the checker still forgives a switching status


@dataclass
class Move:
    vm: str
    at: float  # wall clock of the request
    outcome: str = ""  # done | failed | cancelled | refused | unfinished
    id: str = ""
    source: str = ""
    target: str = ""
    seconds: float = 0.0
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "at": self.at,
            "outcome": self.outcome,
            "id": self.id or None,
            "source": self.source or None,
            "target": self.target or None,
            "seconds": round(self.seconds, 2),
            "reason": self.reason[:300] or None,
        }


class Mover:
    """A thread that moves a random VM of ``vms`` live every ``every`` seconds (uniform)."""

    def __init__(
        self,
        state: Callable[[], LabState],
        vms: list[str],
        checker: Checker,
        seed: int,
        every: tuple[float, float] = (5.0, 15.0),
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        self._state = state
        self.vms = vms
        self.checker = checker
        self.rng = random.Random(f"moves-{seed}")  # its own: the faults' draws stay the same
        self.every = every
        self.log = log
        self.moves: list[Move] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-moves", daemon=True)

    def start(self) -> Mover:
        if self.vms:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=FOLLOW_S + 30)

    def _run(self) -> None:
        while not self._stop.wait(self.rng.uniform(*self.every)):
            vm = self.rng.choice(self.vms)
            try:
                self.moves.append(self.move(vm))
            except Exception as e:  # a mover that dies silently moves nothing: say it
                self.log(f"mover: moving {vm} failed once: {type(e).__name__}: {e}")

    def move(self, vm: str) -> Move:
        """Request a live move of ``vm`` (the scheduler picks the target) and follow it."""
        move = Move(vm, time.time())
        body = {"kind": "live", "reason": "hvc lab chaos: a live migration during faults"}
        status, answer = self._api("post", f"/vms/{vm}/move", body)
        if status is None or status >= 300:
            move.outcome = "refused"
            move.reason = str(answer.get("detail", answer)) if status else "no API answered"
            self.log(f"move: {vm} refused: {move.reason[:200]}")
            return move
        move.id, move.source = str(answer["id"]), str(answer.get("source", ""))
        self.log(f"move: {vm} from {move.source} (migration {move.id})")
        self.checker.set_moving(vm, True)
        try:
            move.outcome = self._follow(move)
        finally:
            threading.Timer(SETTLE_S, self.checker.set_moving, (vm, False)).start()
        move.seconds = time.time() - move.at
        self.log(f"  move of {vm} {move.outcome} after {move.seconds:.1f} s")
        return move

    def _follow(self, move: Move) -> str:
        end = time.monotonic() + FOLLOW_S
        while time.monotonic() < end:
            time.sleep(0.5)
            status, answer = self._api("get", f"/migrations/{move.id}")
            if status != 200:
                continue
            move.target = str(answer.get("target") or move.target)
            move.reason = str(answer.get("reason") or "")
            if answer.get("state") in ENDED:
                return str(answer["state"])
        return "unfinished"

    def _api(self, method: str, path: str, body: Any = None) -> tuple[int | None, Any]:
        """(status, JSON) from the first node whose API answers; (None, {}) if none does."""
        state = self._state()
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=state.ca) if state.ca else False
        )
        for node in state.nodes:
            url = f"{state.api_url(node)}/api/v1{path}"
            try:
                with httpx.Client(verify=verify, headers=state.auth(), timeout=5.0) as c:
                    r = c.post(url, json=body) if method == "post" else c.get(url)
            except httpx.HTTPError:
                continue
            if r.status_code >= 500:
                continue
            try:
                return r.status_code, r.json()
            except ValueError:
                return r.status_code, {"detail": r.text[:300]}
        return None, {}


def summary(moves: list[Move]) -> dict[str, Any]:
    """Counts by outcome, how long the finished ones took, and each move."""
    took = sorted(m.seconds for m in moves if m.outcome == "done")
    return {
        "requested": len(moves),
        "outcomes": dict(Counter(m.outcome for m in moves)),
        "done_s": {"n": len(took), "max": round(took[-1], 2)} if took else {"n": 0},
        "moves": [m.as_dict() for m in moves],
    }
