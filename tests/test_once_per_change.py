"""The stamps that let the Debian-guest tests run once per change (``tests/once_per_change.py``):
any byte changed in the trees they exercise or in the test file changes the hash, compiled
files do not; a pass of one hash skips that hash only, and ``HVC_TEST_ALL=1`` runs it anyway."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import once_per_change as opc


def tree(root: Path) -> Path:
    for top in opc.TREES:
        (root / top).mkdir(parents=True)
        (root / top / "mod.py").write_text(f"# {top}\n")
    test_file = root / "tests" / "test_x.py"
    test_file.parent.mkdir()
    test_file.write_text("def test_x(): pass\n")
    return test_file


def test_any_byte_of_the_trees_or_the_test_file_changes_the_hash(tmp_path: Path) -> None:
    test_file = tree(tmp_path)
    first = opc.change_hash(test_file, tmp_path)
    assert opc.change_hash(test_file, tmp_path) == first
    cache = tmp_path / opc.TREES[0] / "__pycache__"
    cache.mkdir()
    (cache / "mod.cpython-311.pyc").write_bytes(b"compiled")
    assert opc.change_hash(test_file, tmp_path) == first  # not a change of the code
    seen = {first}
    for top in opc.TREES:
        (tmp_path / top / "mod.py").write_text(f"# {top} changed\n")
        seen.add(opc.change_hash(test_file, tmp_path))
    (tmp_path / opc.TREES[1] / "new.py").write_text("")
    seen.add(opc.change_hash(test_file, tmp_path))
    test_file.write_text("def test_x(): assert True\n")
    seen.add(opc.change_hash(test_file, tmp_path))
    assert len(seen) == len(opc.TREES) + 3


def test_a_pass_skips_its_own_hash_only_unless_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HVC_CACHE", str(tmp_path))
    monkeypatch.delenv(opc.FORCE_ENV, raising=False)
    node = "tests/lab/test_x.py::test_x"
    assert opc.passed_before(node, "aaaa") is None
    opc.record_pass(node, "aaaa")
    reason = opc.passed_before(node, "aaaa")
    assert reason is not None and "aaaa" in reason and "passed 20" in reason
    assert opc.passed_before(node, "bbbb") is None  # the code changed
    assert opc.passed_before("tests/lab/test_x.py::test_y", "aaaa") is None  # another test
    monkeypatch.setenv(opc.FORCE_ENV, "1")
    assert opc.passed_before(node, "aaaa") is None
