"""Can this host give guests a named CPU model? Asked of the real QEMU (no guest booted),
and reported in the inventory the agent registers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hvcluster.agent.guestcpu import with_guest_cpu
from hvcluster.drivers.base import HostFacts
from hvcluster.drivers.qemu.driver import QemuDriver
from hvcluster.drivers.qemu.guestcpu import guest_cpu_problem
from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.drivers.sim import SimDriver
from hvcluster.models.node import Capacity, Inventory

QEMU = "qemu-system-x86_64"
pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which(QEMU) is None, reason="needs qemu-system-x86_64"),
]


def test_qemu64_under_tcg_is_provided() -> None:
    assert guest_cpu_problem(QEMU, "qemu64", "tcg") == ""


def test_a_model_tcg_cannot_fully_emulate_names_what_it_lacks() -> None:
    problem = guest_cpu_problem(QEMU, "Skylake-Server", "tcg")
    assert problem.startswith("this host cannot provide Skylake-Server under tcg: it lacks ")


def test_an_unknown_model_and_a_missing_binary() -> None:
    assert "knows no CPU model 'no-such-cpu'" in guest_cpu_problem(QEMU, "no-such-cpu", "tcg")
    assert guest_cpu_problem("/nonexistent/qemu", "qemu64", "tcg") == "/nonexistent/qemu not found"


FACTS = HostFacts(
    capacity=Capacity(cpus=2, memory_mib=1024),
    inventory=Inventory(cpu_model="Host CPU", accelerator="tcg", driver="qemu"),
)


async def test_the_agent_reports_its_qemu_guest_cpu(tmp_path: Path) -> None:
    driver = QemuDriver(tmp_path, QemuSettings(accelerator="tcg", cpu_model="Skylake-Server"))
    inv = (await with_guest_cpu(FACTS, driver)).inventory
    assert inv.guest_cpu_model == "Skylake-Server" and inv.guest_cpu == "Skylake-Server"
    assert "it lacks" in inv.guest_cpu_problem
    ok = QemuDriver(tmp_path, QemuSettings(accelerator="tcg"))
    inv = (await with_guest_cpu(FACTS, ok)).inventory
    assert (inv.guest_cpu_model, inv.guest_cpu_problem) == ("qemu64", "")


async def test_a_sim_node_reports_its_host_model(tmp_path: Path) -> None:
    facts = await SimDriver(run_dir=tmp_path).inventory()
    inv = (await with_guest_cpu(facts, SimDriver(run_dir=tmp_path))).inventory
    assert (inv.guest_cpu_model, inv.guest_cpu_problem) == ("sim-cpu", "")
