"""``hvc lab up`` then ``hvc lab down`` leaves nothing behind: no network namespace, bridge
or veth, no process, no mount, no nft rule. The machine is shared (other labs may come and
go meanwhile), so only what belongs to this lab is compared: names derived from its lab dir
(its bridge, the stem of every link and namespace), processes whose command line names the lab
dir or that live in one of its namespaces (network, or a node's mount namespace), mounts naming
either. The same probes must see all
of it while the lab is up, or the comparison would prove nothing."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from hvcluster.lab import cluster, faults, netns
from hvcluster.models.config import ClusterConfig
from tests.lab.conftest import CACHE, Lab, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout


def namespaces(stem: str) -> set[str]:
    return {line.split()[0] for line in run("ip", "netns", "list").splitlines() if stem in line}


def links(stem: str) -> set[str]:
    """Links of this host's namespace named after the lab (its bridge and veth ends)."""
    found = set()
    for line in run("ip", "-o", "link", "show").splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(stem):
            found.add(name)
    return found


def processes_of(lab_dir: Path, stem: str) -> set[int]:
    """Every process whose command line names the lab dir, or that runs in one of the lab's
    namespaces (a VM placeholder or QEMU started by an agent there)."""
    lab_ns = set()
    for ns in namespaces(stem):
        with contextlib.suppress(OSError):
            lab_ns.add(os.stat(f"/run/netns/{ns}").st_ino)
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            net = os.stat(entry / "ns" / "net").st_ino
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (str(lab_dir) in cmdline or net in lab_ns):
            found.add(int(entry.name))
    return found


def mounts(lab_dir: Path, stem: str) -> set[str]:
    text = Path("/proc/self/mountinfo").read_text()
    return {line for line in text.splitlines() if str(lab_dir) in line or stem in line}


def in_mount_namespaces(inodes: set[int]) -> set[int]:
    """Processes in one of these mount namespaces (a node's own, lab/hostns.py): a namespace
    lives as long as one of its processes, so none left means none left."""
    found = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and os.stat(entry / "ns" / "mnt").st_ino in inodes:
                found.add(int(entry.name))
    return found


def nft_tables() -> set[str]:
    """This host namespace's nft tables named for the lab (the lab puts its partition rules
    in node namespaces only, which go with them; none may leak here)."""
    return {t for t in run("nft", "list", "tables").splitlines() if netns.NFT_TABLE in t}


def snapshot(lab_dir: Path, stem: str) -> dict[str, set[object]]:
    return {
        "namespaces": set(namespaces(stem)),
        "links": set(links(stem)),
        "processes": set(processes_of(lab_dir, stem)),
        "mounts": set(mounts(lab_dir, stem)),
        "nft tables": set(nft_tables()),
    }


def test_lab_up_then_down_leaves_nothing_behind(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    stem = netns.choose(str(lab_dir.resolve())).bridge
    before = snapshot(lab_dir, stem)
    node_mnt: set[int] = set()
    assert not any(before[k] for k in ("namespaces", "links", "processes")), before
    try:
        state = cluster.up(
            2,
            "sim",
            lab_dir,
            CACHE,
            ClusterConfig(),
            log=lambda _: None,
            network="netns",
            etcd_members=3,
            private_mounts=True,
        )
        lab = Lab(lab_dir)
        lab.post("/vms", {"name": "left-1", "memory_mib": 64})
        lab.fault("partition", "n2", source="etcd")  # an nft table in n2's namespace
        assert state.net is not None and state.net.bridge == stem
        vm = wait_for(lambda: faults.find_vm(lab.state, "left-1"), 30, "left-1's process")
        up = snapshot(lab_dir, stem)
        assert len(up["namespaces"]) == 2 + 3 and len(up["links"]) == 1 + 2 + 3, up
        pids = {n.agent_pid for n in state.nodes} | {n.watchdog_pid for n in state.nodes}
        assert pids | set(state.etcd_pids) | {vm[0][1]} <= up["processes"], up["processes"]
        assert any(f"/run/netns/{stem}" in m for m in up["mounts"]), up["mounts"]
        in_n2 = run(*state.net.enter("n2", ["nft", "list", "tables"]))
        assert netns.NFT_TABLE in in_n2
        node_mnt = {os.stat(f"/proc/{p}/ns/mnt").st_ino for p in pids}
        assert os.stat("/proc/self/ns/mnt").st_ino not in node_mnt and len(node_mnt) == 2
        assert vm[0][1] in in_mount_namespaces(node_mnt)
    finally:
        cluster.down(lab_dir, log=lambda _: None)
    after = snapshot(lab_dir, stem)
    assert after == before, {k: after[k] - before[k] for k in after}
    assert not in_mount_namespaces(node_mnt)
    assert not lab_dir.exists()
