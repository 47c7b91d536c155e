"""The agent's config file and flags: clear errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvcluster.agent.config import load_config
from hvcluster.agent.node import NodeIdentity
from hvcluster.host.pki import Authority
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
        ('node = "n1"\nmigration_address = "0.0.0.0"', "migration_address"),
        ('node = "n1"\nmigration_address = "10.0.0.300"', "migration_address"),
        ('node = "n1"\nmigration_address = "mig net"', "migration_address"),
        ('node = "n1"\nmigration_address = 10', "migration_address"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(f, {})
    assert field in str(info.value)


def test_the_migration_address_defaults_to_the_nodes_address(tmp_path: Path) -> None:
    """Unset, migrations listen where they always did (``address``); set, there."""
    f = tmp_path / "agent.toml"
    f.write_text('node = "n1"\naddress = "10.1.0.5"\n')
    cfg = load_config(f, {})
    me = NodeIdentity(cfg.node, cfg.address, cfg.api_port, migration_address=cfg.migration_address)
    assert (cfg.migration_address, me.migration_host) == ("", "10.1.0.5")
    for given in ("10.2.0.5", "fd00:2::5", "mig-n1.example"):
        cfg = load_config(f, {"migration_address": given})
        me = NodeIdentity(cfg.node, cfg.address, cfg.api_port, migration_address=given)
        assert me.migration_host == given


def test_unreadable_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", {})
    bad = tmp_path / "bad.toml"
    bad.write_text("node = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, {})


def test_tls_settings_are_checked_naming_the_field(tmp_path: Path) -> None:
    pki = Authority(tmp_path / "pki")
    files = pki.issue("n1", ["127.0.0.1"])
    f = tmp_path / "agent.toml"
    good = (
        f'node = "n1"\netcd = ["https://127.0.0.1:2379"]\netcd_ca = "{files.ca}"\n'
        f'etcd_cert = "{files.cert}"\netcd_key = "{files.key}"\n'
        f'api_cert = "{files.cert}"\napi_key = "{files.key}"\napi_ca = "{files.ca}"\n'
    )
    f.write_text(good)
    cfg = load_config(f, {})
    assert (cfg.etcd_ca, cfg.api_cert) == (files.ca, files.cert)

    def refused(text: str) -> str:
        f.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(f, {})
        return str(info.value)

    assert "etcd_ca" in refused('node = "n1"\netcd = ["https://127.0.0.1:2379"]\n')
    assert "etcd_ca" in refused(f'node = "n1"\netcd_cert = "{files.cert}"\n')
    assert "etcd_key" in refused(
        f'node = "n1"\netcd_ca = "{files.ca}"\netcd_cert = "{files.cert}"\n'
    )
    assert "api_key" in refused(f'node = "n1"\napi_cert = "{files.cert}"\n')
    other = pki.issue("n2")
    mismatch = refused(f'node = "n1"\napi_cert = "{files.cert}"\napi_key = "{other.key}"\n')
    assert "api_key" in mismatch and "not the key of api_cert" in mismatch
    missing = refused(f'node = "n1"\netcd_ca = "{tmp_path / "nope.crt"}"\n')
    assert "etcd_ca" in missing and "nope.crt" in missing
    (tmp_path / "junk").write_text("junk")
    assert "api_ca" in refused(f'node = "n1"\napi_ca = "{tmp_path / "junk"}"\n')
    assert "etcd_ca" in refused(
        f'node = "n1"\netcd = ["http://127.0.0.1:2379"]\netcd_ca = "{files.ca}"\n'
    )
