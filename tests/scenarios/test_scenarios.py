"""The scenario library: each ``*.toml`` here runs on the simulator (real agents and
controller, virtual time) and must give its golden output (``<name>.golden``: the event log
and final placement) with no invariant broken.

After a deliberate change of behaviour, regenerate the goldens and review the diff:
``HVC_UPDATE_GOLDEN=1 pytest tests/scenarios/test_scenarios.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hvcluster.models.errors import InvalidInput
from hvcluster.simulate.runner import run_scenario
from hvcluster.simulate.scenario import load_scenario, parse_scenario

HERE = Path(__file__).parent
SCENARIOS = sorted(HERE.glob("*.toml"))
UPDATE = os.environ.get("HVC_UPDATE_GOLDEN") == "1"

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
async def test_scenario_gives_its_golden_log_and_placement(path: Path) -> None:
    result = await run_scenario(load_scenario(path))
    assert not result.violations, "\n".join(v.line() for v in result.violations)
    golden = path.with_suffix(".golden")
    text = result.text()
    if UPDATE:
        golden.write_text(text)
    assert golden.exists(), f"no {golden.name}: run with HVC_UPDATE_GOLDEN=1 to write it"
    assert text == golden.read_text(), f"{path.name} no longer gives {golden.name}"


def test_the_library_covers_what_it_promises() -> None:
    names = {p.stem for p in SCENARIOS}
    for needed in ("failover", "priorities", "start_order", "failback_window", "quarantine",
                   "thresholds", "drain_limits", "leader_loss", "partition", "balance_hot_node",
                   "balance_unresolved", "balance_on_resume"):  # fmt: skip
        assert needed in names


async def test_the_same_seed_gives_the_same_output_and_another_seed_may_not() -> None:
    scenario = load_scenario(HERE / "leader_loss.toml")
    first, again = await run_scenario(scenario, 7), await run_scenario(scenario, 7)
    assert first.text() == again.text()
    assert first.as_dict() == again.as_dict()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"nodes": []}, "nodes"),
        ({"nodes": [{"name": "n1"}], "timeline": [{"at": 1, "do": "crash", "node": "n9"}]},
         "timeline.0.node"),
        ({"nodes": [{"name": "n1"}], "timeline": [{"at": 1, "do": "explode"}]},
         "timeline.0.do"),
        ({"nodes": [{"name": "n1"}], "timeline": [{"at": 1, "do": "crash"}]}, "needs a node"),
        ({"nodes": [{"name": "n1"}], "vms": [{"name": "a", "ha": {"priority": "urgent"}}]},
         "vms.0.ha.priority"),
        ({"nodes": [{"name": "n1"}], "cluster": {"lease_ttl_s": -1}}, "lease_ttl_s"),
        ({"nodes": [{"name": "n1"}],
          "timeline": [{"at": 1, "do": "config", "set": {"quarantine.nope": 1}}]},
         "timeline.0.set: quarantine.nope"),
        ({"nodes": [{"name": "n1"}], "sim": {"duration_s": 0}}, "sim.duration_s"),
        ({"nodes": [{"name": "n1"}], "vms": [{"name": "a"}],
          "timeline": [{"at": 1, "do": "cpu", "vm": "a"}]}, "'cpu' needs cpu_percent"),
        ({"nodes": [{"name": "n1"}], "vms": [{"name": "a", "cpu_percent": -1}]},
         "vms.0.cpu_percent"),
    ],
)  # fmt: skip
def test_a_bad_scenario_is_refused_naming_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as e:
        parse_scenario(data, "s.toml")
    assert field in str(e.value) and str(e.value).startswith("s.toml: ")


def test_a_file_that_is_not_toml_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[[nodes]]\nname = \n")
    with pytest.raises(InvalidInput, match=r"bad\.toml: not valid TOML.*line 2"):
        load_scenario(path)
