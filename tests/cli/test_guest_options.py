"""``hvc image build --os`` and ``hvc lab up --guest`` refuse what they cannot do, by name,
before building or starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from hvcluster.cli.main import app as cli_app

pytestmark = pytest.mark.timeout(60)


def hvc(*args: str) -> Result:
    return CliRunner().invoke(cli_app, list(args), env={"COLUMNS": "200"})


def test_bad_guest_options_are_refused_by_name(tmp_path: Path) -> None:
    key = tmp_path / "id.pub"
    key.write_text("not a key\n")
    good_key = tmp_path / "good.pub"
    good_key.write_text("ssh-ed25519 AAAAC3Nza ann@host\n")
    cache = str(tmp_path / "cache")
    for args, said in (
        (("image", "build", "--os", "windows", "--cache", cache), "--os"),
        (("image", "build", "--user", "ann", "--cache", cache), "only with --os debian"),
        (("image", "build", "--os", "debian", "--ssh-key", str(key), "--cache", cache), "SSH"),
        (
            ("image", "build", "--os", "debian", "--ssh-key", str(good_key), "--cache", cache),
            "--user",
        ),
        (("image", "show", "--os", "debian", "--cache", cache), "hvc image build --os debian"),
        (("lab", "up", "--guest", "windows", "--dir", str(tmp_path / "lab")), "--guest"),
        (
            ("lab", "up", "--demo", "--guest", "debian", "--cache", cache, "--dir", str(tmp_path)),
            "hvc image build --os debian",
        ),
    ):
        result = hvc(*args)
        assert result.exit_code != 0 and said in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert not (tmp_path / "cache").exists()  # nothing was built
    assert not (tmp_path / "lab.json").exists()  # no lab was started
