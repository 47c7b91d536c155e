"""The agent's config file and flags: clear errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvcluster.agent.config import load_config
from hvcluster.models.errors import ConfigError


def test_file_and_flags(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text('node = "n1"\netcd = ["127.0.0.1:2379"]\napi_port = 9000\ndriver = "sim"\n')
    cfg = load_config(f, {"api_port": 9001, "address": None})
    assert (cfg.node, cfg.api_port, cfg.driver, cfg.address) == ("n1", 9001, "sim", "127.0.0.1")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('node = "N_1"', "node"),
        ('node = "n1"\napi_port = 70000', "api_port"),
        ('node = "n1"\ndriver = "xen"', "driver"),
        ('node = "n1"\ncolour = "blue"', "colour"),
        ('node = "n1"\netcd = []', "etcd"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(f, {})
    assert field in str(info.value)


def test_unreadable_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", {})
    bad = tmp_path / "bad.toml"
    bad.write_text("node = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, {})
