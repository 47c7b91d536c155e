"""Where the test suite's time goes, from the JUnit XML files a run wrote (``scripts/test``
writes them under build/test-times/): per test directory, the tests and the seconds they
took (setup, call and teardown), and the run's wall time; and the same totals without the
files issue 13 added, so that a suite time can be compared like for like with one measured
before them; and the time of the tests that already existed when issue 12 was filed (commit
``ISSUE_12_FILED``, when the whole suite took ~560 s on these 2 cores), found by name in that
commit's test files (needs the git history; said so when it is missing).

With pytest-xdist the per-test seconds of a directory add up across workers: more than the
wall time when workers ran side by side. The wall time of each file (a pytest run) is its
``testsuite`` time.

    python bench/suite_times.py                 # build/test-times/*.xml
    python bench/suite_times.py run1.xml ...    # those files
"""

from __future__ import annotations

import argparse
import re
import subprocess
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


# The last commit before issue 12 was filed: "the suite runs faster than today's (~560 s)".
ISSUE_12_FILED = "f442d79"


def tests_at(commit: str, root: Path) -> dict[str, str] | None:
    """Each test file's text at ``commit`` (path -> source), or None without that history."""
    git = ["git", "-C", str(root)]
    listing = subprocess.run(
        [*git, "ls-tree", "-r", "--name-only", commit, "tests"], capture_output=True, text=True
    )
    if listing.returncode != 0:
        return None
    texts = {}
    for path in listing.stdout.split():
        if path.endswith(".py"):
            shown = subprocess.run(
                [*git, "show", f"{commit}:{path}"], capture_output=True, text=True
            )
            texts[path] = shown.stdout
    return texts


def existed(texts: dict[str, str], file: str, name: str) -> bool:
    """Whether test ``name`` (parameters dropped) was defined in ``file`` in ``texts``."""
    function = name.split("[")[0]
    return re.search(rf"def {re.escape(function)}\b", texts.get(file, "")) is not None


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


@dataclass
class Totals:
    by_dir: dict[str, Tally]
    issue_13: Tally
    wall: float
    wall_without_13: float
    old: Tally  # the tests that existed when issue 12 was filed
    old_wall: float  # their share of the wall time


def read(paths: list[Path], old_texts: dict[str, str] | None) -> Totals:
    """Per directory, the issue-13 files apart, the wall seconds of the runs, and the wall
    seconds without the issue-13 files (each run's wall time less those files' share of
    its test seconds: exact for a serial run, an estimate for a parallel one); the same
    share for the tests that existed when issue 12 was filed."""
    by_dir: dict[str, Tally] = defaultdict(Tally)
    issue_13 = Tally()
    old = Tally()
    wall = wall_without = old_wall = 0.0
    for path in paths:
        root = ET.parse(path).getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        run_wall = sum(float(s.get("time", 0)) for s in suites)
        run_all = run_13 = run_old = 0.0
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
            if old_texts is not None and existed(old_texts, name, case.get("name", "")):
                old.add(seconds, failed)
                run_old += seconds
        wall += run_wall
        wall_without += run_wall * (1 - run_13 / run_all) if run_all else run_wall
        old_wall += run_wall * run_old / run_all if run_all else 0.0
    return Totals(dict(by_dir), issue_13, wall, wall_without, old, old_wall)


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
    old_texts = tests_at(ISSUE_12_FILED, Path(__file__).resolve().parents[1])
    totals = read(paths, old_texts)
    by_dir, issue_13 = totals.by_dir, totals.issue_13
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
    print(f"wall time of the runs ({', '.join(p.name for p in paths)}): {totals.wall:.1f} s")
    print(f"  without the issue-13 files: ~{totals.wall_without_13:.1f} s")
    if old_texts is None:
        print(f"  tests of {ISSUE_12_FILED} (issue 12 filed): no git history here to find them")
    else:
        print(
            f"  the {totals.old.tests} tests that existed at {ISSUE_12_FILED} (issue 12 filed,"
            f" suite ~560 s then): ~{totals.old_wall:.1f} s of wall time,"
            f" {totals.old.seconds:.1f} s of test time"
        )
    for failed in total.failed:
        print(f"failed: {failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
