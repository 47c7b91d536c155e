"""What ``hvc host install`` writes, in a scratch tree: a valid agent config, never over
the admin's without --force, idempotent, and what uninstall keeps."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from hvcluster.agent.config import load_config
from hvcluster.drivers.runtime import record_identity
from hvcluster.hostinstall import apply
from hvcluster.hostinstall.plan import HostPlan, agent_toml, etcd_flags
from hvcluster.hostinstall.units import AGENT_UNIT, ETCD_UNIT, WATCHDOG_UNIT
from hvcluster.models.errors import ConfigError


def fake_prefix(tmp_path: Path) -> Path:
    prefix = tmp_path / "opt"
    (prefix / "bin").mkdir(parents=True, exist_ok=True)
    (prefix / "bin" / "hvc").write_text("#!/bin/sh\n")
    (prefix / "bin" / "hvc").chmod(0o755)
    return prefix


def scratch(tmp_path: Path, **agent: object) -> HostPlan:
    return HostPlan(
        agent={"node": "hv1", "run_dir": tmp_path / "run", **agent},
        prefix=fake_prefix(tmp_path),
        etc=tmp_path / "etc",
        unit_dir=tmp_path / "units",
        modules_dir=tmp_path / "modules",
        softdog=True,
        etcd_member=True,
    )


def run(plan: HostPlan, force: bool = False) -> list[str]:
    said: list[str] = []
    apply.install(plan, said.append, force=force, packages=False, enable_units=False)
    return said


def test_agent_config_is_what_the_agent_loads(tmp_path: Path) -> None:
    crl = tmp_path / "crl.pem"
    plan = scratch(
        tmp_path, etcd=["10.0.0.1:2379", "10.0.0.2:2379"], address="10.0.0.1", etcd_crl=crl
    )
    path = tmp_path / "agent.toml"
    path.write_text(agent_toml(plan))
    cfg = load_config(path, {})
    assert cfg.node == "hv1"
    assert cfg.etcd == ("10.0.0.1:2379", "10.0.0.2:2379")
    assert cfg.address == "10.0.0.1"
    assert cfg.migration_address == ""  # (unless given: --address)
    assert cfg.etcd_crl == crl
    assert cfg.driver == "qemu"


def test_a_bad_option_fails_the_install_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="api_port"):
        agent_toml(scratch(tmp_path, api_port=70000))
    with pytest.raises(ConfigError, match="etcd_ca"):  # https endpoints without a CA
        agent_toml(scratch(tmp_path, etcd=["https://10.0.0.1:2379"]))
    with pytest.raises(ConfigError, match="migration_address"):
        agent_toml(scratch(tmp_path, migration_address="0.0.0.0"))


def test_install_is_idempotent_and_keeps_an_existing_config(tmp_path: Path) -> None:
    plan = scratch(tmp_path)
    first = run(plan)
    assert any("agent.toml written" in line for line in first)
    for name in (WATCHDOG_UNIT, AGENT_UNIT, ETCD_UNIT):
        assert (plan.unit_dir / name).exists()
    assert (tmp_path / "modules" / "hvc-softdog.conf").read_text() == "softdog\n"
    again = run(plan)
    assert not any("written" in line for line in again), again

    edited = plan.config_path.read_text() + 'labels = {rack = "r2"}\n'
    plan.config_path.write_text(edited)
    changed = HostPlan(**{**plan.__dict__, "agent": {**plan.agent, "address": "10.0.0.9"}})
    run(changed)
    assert plan.config_path.read_text() == edited  # the admin's edit survives
    run(changed, force=True)
    assert tomllib.loads(plan.config_path.read_text())["address"] == "10.0.0.9"


def test_install_needs_the_virtualenv_and_a_node_name(tmp_path: Path) -> None:
    plan = scratch(tmp_path)
    no_venv = HostPlan(**{**plan.__dict__, "prefix": tmp_path / "nothing"})
    with pytest.raises(apply.InstallError, match="scripts/host-install"):
        run(no_venv)
    nameless = HostPlan(**{**plan.__dict__, "agent": {}})
    with pytest.raises(ConfigError, match="--node"):
        run(nameless)


def test_etcd_flags_follows_the_agents_tls(tmp_path: Path) -> None:
    plain = etcd_flags(scratch(tmp_path, address="10.0.0.1"))
    assert "--listen-peer-urls=http://10.0.0.1:2380\n" in plain
    assert "--initial-cluster=hv1=http://10.0.0.1:2380\n" in plain
    assert "cert" not in plain
    pki = Path("/etc/hvcluster/pki")
    agent = {"node": "hv1", "etcd_ca": pki / "ca.crt", "etcd_cert": pki / "hv1.crt"}
    with pytest.raises(ConfigError, match="--etcd-key"):
        etcd_flags(HostPlan(agent=agent))
    tls = etcd_flags(HostPlan(agent={**agent, "etcd_key": pki / "hv1.key"}))
    assert "--cert-file=/etc/hvcluster/pki/hv1.crt\n" in tls
    assert "--peer-key-file=/etc/hvcluster/pki/hv1.key\n" in tls
    assert "--client-cert-auth\n" in tls


def test_uninstall_refuses_while_vms_run_and_keeps_the_config(tmp_path: Path) -> None:
    plan = scratch(tmp_path)
    run(plan)
    vm = tmp_path / "run" / "vms" / "web"
    vm.mkdir(parents=True)
    record_identity(vm, os.getpid())  # this test process stands for a VM's QEMU
    with pytest.raises(apply.InstallError, match="web"):
        apply.uninstall(plan, lambda _: None, force=False)
    said: list[str] = []
    apply.uninstall(plan, said.append, force=True)
    assert not (plan.unit_dir / AGENT_UNIT).exists()
    assert not plan.prefix.exists()
    assert plan.config_path.exists()
    assert any("kept" in line for line in said)
