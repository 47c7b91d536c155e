"""``hvc sim fuzz`` in CI: a few hundred seeded random scenarios (in chunks, so the parallel
pass spreads them over its workers), no invariant broken; and the fuzzer's own parts (a
failing run shrinks to a replay that still fails, written as TOML that loads back)."""

from __future__ import annotations

import tomllib

import pytest

from hvcluster.simulate.fuzz import fuzz, fuzz_one, random_scenario, shrink, to_toml
from hvcluster.simulate.scenario import parse_scenario

CHUNK = 25
CHUNKS = 8  # 200 runs (seeds 0-199)
# Breaches the fuzzer found in the real code, not yet fixed: each must still be found (a fix
# makes its test fail here: then remove it from this list).
KNOWN: dict[int, str] = {}  # seed -> the breach it finds, while not fixed
# Seeds beyond CI's range that once broke an invariant, each fixed, run again here:
# 84 and 418: a VM stopped while its host was dead, its status still "running there" after the
# host came back, so a later start waited for it forever (the agent now reports it stopped);
# 201, 282, 302, 327, 406: the checker's own room rule took hard anti-affinity to bind only when
# both VMs enforce it, where the product (models/fit.py) binds when either does;
# 2609: the checker's quarantine rule expected a quarantine while no node could lead (one hung,
# the other cut off and hung right after declaring it dead).
# 2776, 3563: a VM recovered from a crashed host to another that died too before it reported
# the VM; the first host, back and running nothing, left its "running here" status, and the
# controller waited for it to stop there forever (the agent now reports it stopped).
# 1528, 7138: a VM started by an admin at the same moment its only node was paused (drained)
# was placed there: the placement's write did not compare the node's record as read.
FIXED = (84, 201, 282, 302, 327, 406, 418, 1528, 2609, 2776, 3563, 7138, 9328, 9626)

pytestmark = pytest.mark.timeout(1200)


@pytest.mark.parametrize("chunk", range(CHUNKS))
async def test_random_scenarios_break_no_invariant(chunk: int) -> None:
    # (not shrunk here: 'hvc sim fuzz --runs 1 --seed SEED' writes a failing seed's replay)
    failures = await fuzz(CHUNK, seed=chunk * CHUNK, shrink_failures=False)
    known = {s for s in KNOWN if chunk * CHUNK <= s < (chunk + 1) * CHUNK}
    assert {f.seed for f in failures} >= known, f"fixed? {known}: update KNOWN"
    failures = [f for f in failures if f.seed not in known]
    assert not failures, "\n\n".join(
        f"seed {f.seed}:\n" + "\n".join(v.line() for v in f.result.violations)
        + "\nscenario:\n" + to_toml(f.shrunk)
        for f in failures
    )  # fmt: skip


def test_every_random_scenario_is_valid_and_its_toml_loads_back() -> None:
    for seed in range(200):
        data = random_scenario(seed)
        parse_scenario(data)
        assert parse_scenario(tomllib.loads(to_toml(data))) == parse_scenario(data)


@pytest.mark.parametrize("seed", FIXED)
async def test_seeds_that_once_broke_an_invariant_break_none(seed: int) -> None:
    result = await fuzz_one(seed)
    assert not result.violations, "\n".join(v.line() for v in result.violations)


async def test_a_breach_shrinks_to_what_it_needs() -> None:
    """A VM whose possible owners are all down is fine; one too big for every node breaks
    nothing either. A stop the scenario never undoes is intent, not a breach. So the breach
    here is made by a recovery SLO of 2 s, which a VM starting fresh meets but a
    crashed host's VM cannot meet; shrinking keeps the crash and one VM, and drops the rest."""
    data = {
        "name": "shrink-me",
        "sim": {"duration_s": 15.0, "recovery_slo_s": 2.0},
        "nodes": [{"name": "n1"}, {"name": "n2"}, {"name": "n3"}],
        "vms": [{"name": "a", "ha": {"preferred_owners": ["n1"]}}, {"name": "b"}],
        "timeline": [
            {"at": 2.0, "do": "pause", "node": "n3"},
            {"at": 3.0, "do": "crash", "node": "n1"},
            {"at": 4.0, "do": "stop_vm", "vm": "b"},
        ],
    }
    shrunk = await shrink(data, 0)
    assert [s["do"] for s in shrunk["timeline"]] == ["crash"]
    assert len(shrunk["vms"]) == 1  # either: alone, each is placed on n1, which crashes
    assert len(shrunk["nodes"]) < 3
