"""docs/install.md, sections 5 and 6, followed on 3 hosts: ``hvc cluster init`` on hv1, its
etcd handed over to hvc-etcd, then ``hvc node join`` (an etcd learner, promoted) and the
host install on hv2 and hv3, each host's units started; at the end 3 nodes are ready and etcd
has 3 voting members.

Each host is a network namespace of its own (lab/netns.py: its own address, so the doc's
ports 2379, 2380 and 8440 as they are) and a mount namespace in which ``/etc/hvcluster``,
``/var/lib/hvcluster``, ``/run/hvc`` and ``/etc/systemd/system`` are its own (empty tmpfs:
nothing is written to this machine's) and ``/opt/hvcluster`` is this test's virtualenv (the
virtualenv step, ``scripts/host-install --venv-only``, is test_chroot_install.py's). No
systemd runs here: the host install runs as ``scripts/host-install`` does after the
virtualenv (``hvc host install``) with ``--no-packages --no-enable``, and each unit's
ExecStart is started by hand from the unit file it wrote, as systemd would run it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hvcluster.lab import netns

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root"),
]

HVC = "/opt/hvcluster/bin/hvc"
ETC = Path("/etc/hvcluster")
CA = ETC / "pki" / "ca.crt"
UNITS = Path("/etc/systemd/system")
PRIVATE = (ETC, Path("/var/lib/hvcluster"), Path("/run/hvc"), UNITS)
VENV = Path("/opt/hvcluster")


@dataclass
class Host:
    """One host: its network namespace, and a process holding its mount namespace."""

    name: str
    ip: str
    ns: str
    logs: Path
    holder: subprocess.Popen[bytes] | None = None
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def enter(self, argv: list[str]) -> list[str]:
        assert self.holder is not None
        return [
            "nsenter",
            f"--net=/run/netns/{self.ns}",
            f"--mount=/proc/{self.holder.pid}/ns/mnt",
            "--",
            *argv,
        ]

    def run(self, *argv: str, timeout: float = 120) -> str:
        """``argv`` on this host, as an operator types it; its stdout (it must succeed)."""
        done = subprocess.run(
            self.enter(list(argv)), capture_output=True, text=True, timeout=timeout
        )
        transcript = self.logs / "transcript.txt"
        with transcript.open("a") as f:
            f.write(f"[{self.name}]# {shlex.join(argv)}\n{done.stdout}{done.stderr}")
        assert done.returncode == 0, f"{self.name}: {shlex.join(argv)}: {done.stderr}"
        return done.stdout

    def start_unit(self, unit: str) -> None:
        """The unit's ExecStart as systemd runs it (``$$`` is a ``$``), detached."""
        text = (self.logs / "units" / self.name / unit).read_text().replace("\\\n", " ")
        found = re.search(r"(?m)^ExecStart=(.+)$", text)
        assert found, f"no ExecStart in {unit}"
        argv = shlex.split(found.group(1).replace("$$", "$"))
        with (self.logs / f"{self.name}-{unit}.log").open("ab") as out:
            proc = subprocess.Popen(
                self.enter(argv), stdout=out, stderr=out, start_new_session=True
            )
        self.started.append(proc)
        if unit == "hvc-agent.service":
            self.agents.append(proc)

    def restart_agent(self) -> None:
        """What ``systemctl restart hvc-agent`` does: SIGTERM, wait, ExecStart again."""
        agent = self.agents.pop()
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(40)
        self.start_unit("hvc-agent.service")

    def copy_units(self) -> None:
        """The unit files it wrote (to read their ExecStart from this host's namespace)."""
        dest = self.logs / "units" / self.name
        dest.mkdir(parents=True, exist_ok=True)
        self.run("sh", "-c", f"cp {UNITS}/hvc-*.service {dest}/")

    def stop(self) -> None:
        for proc in reversed(self.started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait(10)


def _hold(host: Host) -> None:
    """Its mount namespace: a private tmpfs on each of PRIVATE, the virtualenv at VENV."""
    mounts = [f"mount -t tmpfs -o mode=0755 hvc-{host.name} {p}" for p in PRIVATE]
    mounts.append(f"mount --bind {shlex.quote(sys.prefix)} {VENV}")
    script = " && ".join([*mounts, "exec sleep 3600"])
    argv = ["nsenter", f"--net=/run/netns/{host.ns}", "--"]
    argv += ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script]
    host.holder = subprocess.Popen(argv, start_new_session=True)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        mountinfo = Path(f"/proc/{host.holder.pid}/mountinfo")
        with contextlib.suppress(OSError):
            if f" {VENV} " in mountinfo.read_text():
                return
        assert host.holder.poll() is None, f"{host.name}'s mount namespace was not made"
        time.sleep(0.05)
    raise AssertionError(f"{host.name}'s mount namespace was not made in 10 s")


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[list[Host]]:
    made = [p for p in (*PRIVATE, VENV) if not p.exists()]
    for path in made:  # mount points only, removed after
        path.mkdir(parents=True)
    net = netns.choose(str(tmp_path))
    names = ["hv1", "hv2", "hv3"]
    three = [
        Host(name, net.node_ip(i + 1), net.netns(name), tmp_path) for i, name in enumerate(names)
    ]
    try:
        netns.create(net, {h.name: h.ip for h in three})
        for host in three:
            _hold(host)
        yield three
    finally:
        for host in three:
            host.stop()
        netns.destroy(net, names)
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir()


def _wait_healthy(host: Host, timeout: float = 120) -> None:
    ca = ssl.create_default_context(cafile=str(host.logs / "ca.crt"))
    url = f"https://{host.ip}:8440/api/v1/healthz"
    end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2, context=ca) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < end, f"{host.name}'s agent did not answer at {url}"
        time.sleep(0.5)


def test_install_doc_on_three_hosts(hosts: list[Host], tmp_path: Path) -> None:
    hv1, hv2, hv3 = hosts
    api = f"https://{hv1.ip}:8440"
    # Section 6, on the first host: init (it starts etcd by itself), then etcd handed to
    # hvc-etcd and the host installed; its agent.toml and etcd.flags are kept.
    admin = hv1.run(HVC, "cluster", "init", "--node", "hv1", "--address", hv1.ip).split()[-1]
    hv1.run("sh", "-c", f'kill "$(cat {ETC}/etcd.pid)"')
    hv1.run("sh", "-c", f'while kill -0 "$(cat {ETC}/etcd.pid)" 2>/dev/null; do sleep 0.1; done')
    hv1.run(HVC, "host", "install", "--etcd-member", "--no-packages", "--no-enable")
    hv1.copy_units()
    hv1.run("cp", str(CA), str(tmp_path / "ca.crt"))
    for unit in ("hvc-etcd.service", "hvc-watchdog.service", "hvc-agent.service"):
        hv1.start_unit(unit)
    _wait_healthy(hv1)
    for host in (hv2, hv3):  # each an etcd member (hv2's votes once hv3 joined)
        token = hv1.run(
            HVC, "--token", admin, "--ca", str(CA), "cluster", "join-token", host.name,
            "--api", api,
        ).split()[-1]  # fmt: skip
        said = host.run(HVC, "node", "join", "--cluster", api, "--token", token,
                        "--address", host.ip)  # fmt: skip
        endpoints = re.search(r"etcd endpoints: (.+)", said)
        crl = re.search(r'etcd_crl = "([^"]+)"', said)
        assert endpoints and crl, said
        host.run("test", "-f", str(ETC / "etcd.flags"))  # where hvc-etcd reads them
        pki = ETC / "pki"
        host.run(
            HVC, "host", "install", "--node", host.name, "--address", host.ip,
            "--api-host", host.ip, "--etcd", endpoints.group(1).replace(" ", ""),
            "--etcd-ca", str(CA), "--etcd-cert", f"{pki}/{host.name}.crt",
            "--etcd-key", f"{pki}/{host.name}.key", "--api-cert", f"{pki}/{host.name}.crt",
            "--api-key", f"{pki}/{host.name}.key", "--api-ca", str(CA),
            "--etcd-crl", crl.group(1), "--etcd-member", "--no-packages", "--no-enable",
        )  # fmt: skip
        host.copy_units()
        host.start_unit("hvc-etcd.service")
        host.run(HVC, "node", "join", "--cluster", api, "--token", token, "--promote")
        host.start_unit("hvc-watchdog.service")
        host.start_unit("hvc-agent.service")
        _wait_healthy(host)
    # Every agent is given every member: each was given those that existed when it joined.
    every = ",".join(f'"https://{h.ip}:2379"' for h in hosts)
    for host in hosts:
        host.run("sed", "-i", f"s|^etcd = .*|etcd = [{every}]|", str(ETC / "agent.toml"))
        host.restart_agent()  # systemctl restart hvc-agent: back within fence_after
    for host in hosts:
        _wait_healthy(host)
    listed = hv1.run(HVC, "--token", admin, "--ca", str(CA), "node", "list", "--json",
                     "--api", api)  # fmt: skip
    nodes = json.loads(listed)["nodes"]
    assert sorted(n["name"] for n in nodes) == ["hv1", "hv2", "hv3"], nodes
    assert all(n["alive"] and n["watchdog"] == "ok" for n in nodes), nodes
    members = hv1.run(
        "etcdctl", f"--endpoints=https://{hv1.ip}:2379", f"--cacert={CA}",
        f"--cert={ETC}/pki/hv1.crt", f"--key={ETC}/pki/hv1.key", "member", "list", "-w", "json",
    )  # fmt: skip
    voters = [m for m in json.loads(members)["members"] if not m.get("isLearner")]
    assert sorted(m["name"] for m in voters) == ["hv1", "hv2", "hv3"], members
