"""Where the test suite's time goes, from the JUnit XML files a run wrote (``scripts/test``
writes them under build/test-times/): per test directory, the tests and the seconds they
took (setup, call and teardown), and the run's wall time; and the same totals without the
files issue 13 added, so that a suite time can be compared like for like with one measured
before them.

With pytest-xdist the per-test seconds of a directory add up across workers: more than the
wall time when workers ran side by side. The wall time of each file (a pytest run) is its
``testsuite`` time.

    python bench/suite_times.py                 # build/test-times/*.xml
    python bench/suite_times.py run1.xml ...    # those files
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "build" / "test-times"

# The test files issue 13 (etcd outages, stalls, chaos) added: left out of the like-for-like
# total, which compares with the suite as it was before them.
ISSUE_13 = frozenset(
    {
        "tests/lab/test_chaos.py",
        "tests/lab/test_etcd_outage.py",
        "tests/lab/test_etcd_frozen.py",
        "tests/lab/test_stalls.py",
        "tests/lab/test_lab_cleanup.py",
        "tests/store/test_silent_member.py",
    }
)


@dataclass
class Tally:
    tests: int = 0
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)

    def add(self, seconds: float, failed: str | None) -> None:
        self.tests += 1
        self.seconds += seconds
        if failed is not None:
            self.failed.append(failed)


def test_file(classname: str) -> str:
    """``tests.lab.test_chaos.TestX`` -> ``tests/lab/test_chaos.py``."""
    parts = classname.split(".")
    for i, part in enumerate(parts):
        if part.startswith("test_"):
            return "/".join(parts[: i + 1]) + ".py"
    return "/".join(parts) + ".py"


def read(paths: list[Path]) -> tuple[dict[str, Tally], Tally, float, float]:
    """Per directory, the issue-13 files apart, the wall seconds of the runs, and the wall
    seconds without the issue-13 files (each run's wall time less those files' share of
    its test seconds: exact for a serial run, an estimate for a parallel one)."""
    by_dir: dict[str, Tally] = defaultdict(Tally)
    issue_13 = Tally()
    wall = wall_without = 0.0
    for path in paths:
        root = ET.parse(path).getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        run_wall = sum(float(s.get("time", 0)) for s in suites)
        run_all = run_13 = 0.0
        for case in root.iter("testcase"):
            name = test_file(case.get("classname", ""))
            seconds = float(case.get("time", 0))
            bad = case.find("failure") is not None or case.find("error") is not None
            failed = f"{name}::{case.get('name')}" if bad else None
            by_dir[str(Path(name).parent)].add(seconds, failed)
            run_all += seconds
            if name in ISSUE_13:
                issue_13.add(seconds, failed)
                run_13 += seconds
        wall += run_wall
        wall_without += run_wall * (1 - run_13 / run_all) if run_all else run_wall
    return dict(by_dir), issue_13, wall, wall_without


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "xml", nargs="*", type=Path, help="JUnit XML files (default: all in %(prog)s's build dir)"
    )
    args = parser.parse_args(argv)
    paths = args.xml or sorted(DEFAULT_DIR.glob("*.xml"))
    if not paths:
        print(
            f"no JUnit XML given and none in {DEFAULT_DIR}: run scripts/test first", file=sys.stderr
        )
        return 1
    by_dir, issue_13, wall, wall_without = read(paths)
    total = Tally()
    print(f"{'directory':<20} {'tests':>6} {'seconds':>9}")
    for name in sorted(by_dir):
        t = by_dir[name]
        total.tests += t.tests
        total.seconds += t.seconds
        total.failed += t.failed
        print(f"{name:<20} {t.tests:>6} {t.seconds:>9.1f}")
    print(f"{'all':<20} {total.tests:>6} {total.seconds:>9.1f}")
    print(f"{'  issue-13 files':<20} {issue_13.tests:>6} {issue_13.seconds:>9.1f}")
    rest = total.seconds - issue_13.seconds
    print(f"{'  all but those':<20} {total.tests - issue_13.tests:>6} {rest:>9.1f}")
    print(f"wall time of the runs ({', '.join(p.name for p in paths)}): {wall:.1f} s")
    print(f"  without the issue-13 files: ~{wall_without:.1f} s")
    for failed in total.failed:
        print(f"failed: {failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
