"""A lab with private mounts models separate hosts (lab/hostns.py): each node's watchdog, its
agent and the QEMU processes the agent starts run in a mount namespace of that node's own, in
which the lab dir holds only its run dir, its certificate files and the shared volume. A file
one node writes into its run dir is not there for another node, a VM's QMP socket is only in
its node's namespace, and this host (the lab's operator, and its host-view checker) still sees
every node's files and QEMU."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hvcluster.guestimage.image import cached_image
from hvcluster.lab import hostview
from hvcluster.lab.state import LabNode
from tests.lab.conftest import CACHE, Lab, make_lab, wait_for
from tests.lab.test_qemu_failover import create_guest, running

pytestmark = [
    pytest.mark.lab,
    pytest.mark.timeout(240),
    pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root"),
]


@pytest.fixture(scope="module")
def lab2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if cached_image(CACHE) is None:
        pytest.fail("the test guest image is not built: run scripts/install (hvc image build)")
    yield from make_lab(tmp_path_factory.mktemp("mounts-lab"), "qemu", nodes=2, private_mounts=True)


def mnt_ns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/mnt").st_ino


def in_node(node: LabNode, *argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` run in ``node``'s mount namespace (its agent's)."""
    return subprocess.run(
        ["nsenter", f"--mount=/proc/{node.agent_pid}/ns/mnt", "--", *argv],
        capture_output=True,
        text=True,
        timeout=10,
    )


def exists_in(node: LabNode, path: Path, test: str = "-e") -> bool:
    return in_node(node, "test", test, str(path)).returncode == 0


def test_each_node_has_its_own_mount_namespace(lab2: Lab) -> None:
    state = lab2.state
    assert state.private_mounts
    n1, n2 = state.nodes
    host = mnt_ns(os.getpid())
    assert len({host, mnt_ns(n1.agent_pid), mnt_ns(n2.agent_pid)}) == 3
    for node in (n1, n2):  # its agent, its watchdog: one host
        assert mnt_ns(node.watchdog_pid) == mnt_ns(node.agent_pid)
        assert exists_in(node, Path(node.run_dir) / "agent.toml")


def test_a_restarted_agent_is_back_in_its_nodes_namespace(lab2: Lab) -> None:
    n1 = lab2.state.node("n1")
    lab2.fault("kill-agent", "n1")
    lab2.restart("n1")
    back = lab2.state.node("n1")
    assert back.agent_pid != n1.agent_pid and back.watchdog_pid == n1.watchdog_pid
    home = mnt_ns(n1.watchdog_pid)  # (nsenter enters it just after it starts)
    wait_for(lambda: mnt_ns(back.agent_pid) == home, 10, "the new agent in n1's namespace")
    url = f"{lab2.state.api_url(back)}/api/v1/healthz"
    wait_for(lambda: httpx.get(url, timeout=2, verify=lab2.ca).status_code == 200, 60, "n1 back")


def test_a_file_in_a_run_dir_is_only_on_its_node(lab2: Lab) -> None:
    state = lab2.state
    n1, n2 = state.nodes
    marker = Path(n1.run_dir) / "only-on-n1"
    write = in_node(n1, "sh", "-c", f"echo n1 > {marker}")
    assert write.returncode == 0, write.stderr
    assert exists_in(n1, marker)
    assert marker.read_text() == "n1\n"  # the operator (this host) sees every node's disk
    assert not exists_in(n2, marker)
    assert not exists_in(n2, Path(n1.run_dir))
    # Nor anything else of the lab that is not n2's: the CA's key, lab.json, etcd's data.
    lab_dir = Path(state.dir)
    for hidden in (lab_dir / "lab.json", lab_dir / "pki" / "ca.key", lab_dir / "etcd"):
        assert hidden.exists() and not exists_in(n2, hidden), hidden
    readonly = in_node(n2, "touch", str(lab_dir / "stray"))
    assert readonly.returncode != 0 and not (lab_dir / "stray").exists()
    # The shared volume is the one path both see, and the same file there.
    shared = Path(state.shared_dir) / "from-n1"
    assert in_node(n1, "sh", "-c", f"echo hello > {shared}").returncode == 0
    assert in_node(n2, "cat", str(shared)).stdout == "hello\n"


def test_a_vm_and_its_sockets_live_in_its_nodes_namespace(lab2: Lab) -> None:
    state = lab2.state
    n1, n2 = state.nodes
    create_guest(lab2, "homed", "n1", memory_mib=64, only_there=True)
    try:
        wait_for(lambda: running(lab2, "homed"), 120, "homed running on n1")
        pid = int((Path(n1.run_dir) / "vms" / "homed" / "pid").read_text())
        assert mnt_ns(pid) == mnt_ns(n1.agent_pid) != mnt_ns(n2.agent_pid)
        qmp = Path(n1.run_dir) / "vms" / "homed" / "qmp.sock"
        assert exists_in(n1, qmp, "-S") and not exists_in(n2, qmp)
        seen = hostview.qemu_processes(lab2.state)  # the host view still finds it, on n1
        assert [(p.node, p.vm) for p in seen if p.pid == pid] == [("n1", "homed")], seen
    finally:
        lab2.delete("/vms/homed")
