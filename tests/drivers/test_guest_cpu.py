"""Can this host give guests a named CPU model? Asked of the real QEMU (no guest booted),
and reported in the inventory the agent registers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hvcluster.agent.guestcpu import with_guest_cpu
from hvcluster.drivers.base import HostFacts
from hvcluster.drivers.qemu.driver import QemuDriver
from hvcluster.drivers.qemu.guestcpu import cpu_models, guest_cpu_problem
from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.drivers.sim import SimDriver
from hvcluster.models.guestcpu import default_guest_cpu
from hvcluster.models.node import Capacity, Inventory
from hvcluster.models.vm import Disk, VMSpec

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
    inventory=Inventory(host_cpu="Host CPU", accelerator="tcg", driver="qemu"),
)


async def test_the_agent_reports_its_qemu_guest_cpu(tmp_path: Path) -> None:
    driver = QemuDriver(tmp_path, QemuSettings(accelerator="tcg", cpu_model="Skylake-Server"))
    inv = (await with_guest_cpu(FACTS, driver)).inventory
    assert inv.guest_cpu_model == "Skylake-Server" == default_guest_cpu(inv)
    assert "it lacks" in inv.guest_cpu_problem
    ok = QemuDriver(tmp_path, QemuSettings(accelerator="tcg"))
    inv = (await with_guest_cpu(FACTS, ok)).inventory
    assert (inv.guest_cpu_model, inv.guest_cpu_problem) == ("qemu64", "")
    # every model TCG gives in full and that migrates; not one it lacks features of, nor max
    assert {"qemu64", "Nehalem"} <= set(inv.guest_cpu_models)
    assert "Skylake-Server" not in inv.guest_cpu_models and "max" not in inv.guest_cpu_models


def test_qemu_lists_the_models_it_provides_once() -> None:
    first = cpu_models(QEMU, "tcg")
    assert first is cpu_models(QEMU, "tcg")  # asked once per process
    assert "max" in first.models and "max" in first.unsafe and "max" not in first.provided
    assert cpu_models("/nonexistent/qemu", "tcg").error == "/nonexistent/qemu not found"


async def cpu_type(driver: QemuDriver, name: str) -> str:
    """The QOM type of the VM's first vCPU, asked of its QEMU (query-cpus-fast, qom-get)."""
    monitor = driver.vms.running[name].monitor
    assert monitor is not None
    cpus = await monitor.execute("query-cpus-fast")
    kind = await monitor.execute("qom-get", {"path": cpus[0]["qom-path"], "property": "type"})
    return str(kind)


def cmdline(pid: int | None) -> list[str]:
    assert pid is not None
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


@pytest.mark.timeout(90)
async def test_an_incoming_vm_gets_the_model_it_runs_with_not_the_hosts_default(
    tmp_path: Path,
) -> None:
    """The target of a migration starts QEMU (paused, -incoming: nothing boots) with the
    model in the spec the agent hands it; a spec naming none gets the host's default."""
    disk = tmp_path / "empty.raw"
    disk.write_bytes(bytes(1024 * 1024))
    base = VMSpec(name="moved", memory_mib=32, disks=(Disk(path=str(disk), format="raw"),))
    driver = QemuDriver(tmp_path / "run", QemuSettings(accelerator="tcg", cpu_model="qemu64"))
    try:
        spec = base.model_copy(update={"cpu_model": "Nehalem"})
        assert await driver.prepare_incoming(spec, 2, "127.0.0.1")
        info = await driver.status("moved")
        assert info.cpu_model == "Nehalem"
        assert await cpu_type(driver, "moved") == "Nehalem-x86_64-cpu"
        argv = cmdline(info.pid)
        assert argv[argv.index("-cpu") + 1] == "Nehalem" and "-incoming" in argv

        plain = base.model_copy(update={"name": "plain"})
        assert await driver.prepare_incoming(plain, 1, "127.0.0.1")
        assert (await driver.status("plain")).cpu_model == ""  # the driver's default
        assert await cpu_type(driver, "plain") == "qemu64-x86_64-cpu"
    finally:
        for name in ("moved", "plain"):
            await driver.discard(name)
        await driver.close()


async def test_a_sim_node_reports_its_host_model(tmp_path: Path) -> None:
    facts = await SimDriver(run_dir=tmp_path).inventory()
    inv = (await with_guest_cpu(facts, SimDriver(run_dir=tmp_path))).inventory
    assert (inv.guest_cpu_model, inv.guest_cpu_problem) == ("sim-cpu", "")
