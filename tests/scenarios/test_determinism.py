"""``hvc sim`` replays are byte-identical: whatever the interpreter's string hashing
(``PYTHONHASHSEED``), whatever ran before in the same process (task addresses, so the order
of any set of tasks), and however fast the machine runs (no real-time timeout in the
simulated daemons). Each run's output is its text: the event log and the final placement.

Run as a script (``python test_determinism.py ITEM...``, an item a fuzz seed or a scenario
file's name here), it prints each item's output as JSON: what the subprocesses below run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hvcluster.simulate.fuzz import fuzz_one
from hvcluster.simulate.runner import run_scenario
from hvcluster.simulate.scenario import load_scenario

HERE = Path(__file__).parent
# seed 3: etcd down twice, its nodes back at one instant (the order of their node.etcd_back
# events once depended on the machine's speed); 22: a crash and a restart; 25: a hang, a crash,
# partitions and a restart; the library's scenarios of a hang (keepalives blocked: the hedged
# keepalive's timers) and of a leader lost mid-action
ITEMS = ["3", "22", "25", "hang", "leader_loss"]

pytestmark = pytest.mark.timeout(120)


async def output(item: str) -> str:
    if item.isdigit():
        return (await fuzz_one(int(item))).text()
    return (await run_scenario(load_scenario(HERE / f"{item}.toml"))).text()


async def outputs(items: list[str]) -> dict[str, str]:
    return {item: await output(item) for item in items}


def in_subprocess(hash_seed: str, items: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.Popen(
        [sys.executable, __file__, *items], env=env, stdout=subprocess.PIPE, text=True
    )


def test_hash_seeds_and_run_order_change_no_output() -> None:
    """Three interpreters with different string hashing, one running the items in reverse
    (so each runs after different ones)."""
    runs = {
        "0": in_subprocess("0", ITEMS),
        "1": in_subprocess("1", ITEMS[::-1]),
        "12345": in_subprocess("12345", ITEMS),
    }
    got = {}
    try:
        for hash_seed, proc in runs.items():
            out, _ = proc.communicate(timeout=100)
            assert proc.returncode == 0, f"PYTHONHASHSEED={hash_seed}: exit {proc.returncode}"
            got[hash_seed] = json.loads(out)
    finally:
        for proc in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    first = got["0"]
    assert sorted(first) == sorted(ITEMS)
    for hash_seed, outs in got.items():
        for item in ITEMS:
            assert outs[item] == first[item], f"{item} differs with PYTHONHASHSEED={hash_seed}"


async def test_a_seed_replays_the_same_after_other_runs_in_the_process() -> None:
    first = await output("3")
    await output("22")
    assert await output("3") == first


class FastRealTime(asyncio.SelectorEventLoop):
    """An event loop whose real-time clock runs 10,000 times fast: what a very slow (or
    very loaded) machine looks like to a timeout in real seconds."""

    def time(self) -> float:
        return time.monotonic() * 10_000


def test_a_slow_machine_changes_no_output() -> None:
    """Any real-time timeout left in the simulated daemons fires here at other virtual
    moments than on a normal loop, and the log shows it (seed 3's did, before they followed
    the virtual clock)."""
    items = ["3", "hang"]
    normal = asyncio.run(outputs(items))
    with asyncio.Runner(loop_factory=FastRealTime) as runner:  # (ends what is left, as run)
        slow = runner.run(outputs(items))
    for item in items:
        assert slow[item] == normal[item], f"{item} depends on the speed of real time"


if __name__ == "__main__":
    logging.disable(logging.CRITICAL)  # the daemons' own log: noise on stderr
    print(json.dumps(asyncio.run(outputs(sys.argv[1:]))))
