"""Drivers are chosen by name (the agent config's ``driver``), built with its options."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvcluster.drivers.qemu import QemuDriver
from hvcluster.drivers.registry import DriverOptions, make_driver
from hvcluster.drivers.sim import SimDriver
from hvcluster.drivers.sim.links import SimHostLinks
from hvcluster.host.network import IpLinks
from hvcluster.models.errors import ConfigError


async def test_each_name_builds_its_driver_with_the_options_that_concern_it(
    tmp_path: Path,
) -> None:
    options = DriverOptions(
        run_dir=tmp_path, accelerator="tcg", cache_dir=tmp_path / "cache", guest_cpu="Nehalem",
        sim_seed=7,
    )  # fmt: skip
    qemu = make_driver("qemu", options)
    assert isinstance(qemu, QemuDriver) and qemu.kind == "qemu"
    assert (qemu.settings.accelerator, qemu.settings.cpu_model) == ("tcg", "Nehalem")
    assert qemu.settings.cache_dir == tmp_path / "cache" and qemu.run_dir == tmp_path
    assert isinstance(qemu.links(), IpLinks)
    sim = make_driver("sim", options)
    assert isinstance(sim, SimDriver) and (sim.kind, sim.seed, sim.run_dir) == ("sim", 7, tmp_path)
    links = sim.links()
    assert isinstance(links, SimHostLinks)
    await links.add_bridge("hvb-lan")  # a bridge made on a sim host is one its VMs find
    assert sim.host.switches == ("hvb-lan",)


def test_an_unknown_driver_name_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no driver 'xen' \\(there are qemu, sim\\)"):
        make_driver("xen", DriverOptions(run_dir=tmp_path))
